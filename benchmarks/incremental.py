"""Incremental indexing, measured: first index, a no-change re-index, a re-index after editing one document,
then `maintain`, on copies of the corpus. The sequence runs twice: as commands (`lateline index`, one process
each, what a scheduled job pays: Python and Ray start, model load) and in one process (Ray started once, what
the pipeline itself costs). Prints wall times, forward passes, the ratios, and the table's rows / versions /
fragments before and after maintain.

    python benchmarks/incremental.py --config configs/local.yaml
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.config import JobConfig, apply_overrides, load_config, parse_config
from pipeline.maintain import maintain
from pipeline.runner import run_index

STEPS = ("first index", "no-change re-index", "one document edited")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/local.yaml", help="a jsonl-source config (its source is copied)")
    args = parser.parse_args(argv)
    base = load_config(args.config)
    work = Path(tempfile.mkdtemp(prefix="lateline-incremental-"))
    rows = []
    for how in ("command", "in one process"):
        config = _copy(base, work / how.replace(" ", "-"))
        for step in STEPS:
            if step == "one document edited":
                _edit_one(Path(config.source.uri))
            wall, summary = _run(config, how)
            counts = summary["counts"]
            skipped = summary["source"]["objects_skipped_unchanged"]
            rows.append((step, how, wall, summary["wall_s"], counts["docs_written"], counts["docs_skipped_unchanged"],
                         counts["forward_passes"], skipped))  # fmt: skip
    report = maintain(parse_config(apply_overrides(config.model_dump(), ["maintain.retain_versions_hours=0"])))
    print(f"{'run':<20} {'how':<15} {'wall s':>7} {'summary s':>10} {'written':>8} {'unchanged':>10} {'forwards':>9} "
          f"{'objects skipped':>16}")  # fmt: skip
    for step, how, wall, summary_wall, written, unchanged, forwards, skipped in rows:
        print(f"{step:<20} {how:<15} {wall:>7.2f} {summary_wall:>10.2f} {written:>8} {unchanged:>10} {forwards:>9} "
              f"{skipped:>16}")  # fmt: skip
    for how in ("command", "in one process"):
        first, same = (next(r[2] for r in rows if r[0] == step and r[1] == how) for step in STEPS[:2])
        print(f"{how}: no-change re-index / first index: {same / first:.3f} of the wall time")
    print("maintain:", json.dumps({k: report[k] for k in ("actions", "before", "after")}))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _copy(base: JobConfig, work: Path) -> JobConfig:
    """``base`` over a copy of its corpus, writing under ``work``."""
    corpus = work / "corpus"
    shutil.copytree(base.source.uri, corpus)
    overrides = [f"source.uri={corpus}", f"sink.uri={work / 'db'}", f"runtime.summary_dir={work / 'runs'}"]
    return parse_config(apply_overrides(base.model_dump(), [*overrides, "sink.commit_rows=100"]))


def _run(config: JobConfig, how: str) -> tuple[float, dict[str, Any]]:
    """``(wall seconds, run summary)`` of one index run, as a command or in this process."""
    started = time.perf_counter()
    if how == "in one process":
        summary = run_index(config)
        return time.perf_counter() - started, summary
    path = Path(config.runtime.summary_dir).parent / "job.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))  # JSON is YAML
    lateline = Path(sys.executable).with_name("lateline")
    done = subprocess.run([str(lateline), "index", "--config", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"lateline index exited {done.returncode}:\n{done.stderr}")
    wall = time.perf_counter() - started
    newest = max(Path(config.runtime.summary_dir).glob("*/summary.json"))
    return wall, json.loads(newest.read_text())


def _edit_one(corpus: Path) -> None:
    path = next(corpus.glob("*.jsonl"))
    lines = path.read_text().splitlines()
    record = json.loads(lines[0])
    record["text"] += "\n\nOne added sentence changes this document."
    path.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")


if __name__ == "__main__":
    sys.exit(main())
