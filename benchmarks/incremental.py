"""Incremental indexing, measured: first index, a no-change re-index, a re-index after editing one document,
then `maintain`, in one run on a copy of the corpus. Prints wall times, forward passes, the ratios, and the
table's rows / versions / fragments before and after maintain.

    python benchmarks/incremental.py --config configs/local.yaml
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline.config import apply_overrides, load_config, parse_config
from pipeline.maintain import maintain
from pipeline.runner import run_index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/local.yaml", help="a jsonl-source config (its source is copied)")
    args = parser.parse_args(argv)
    base = load_config(args.config)
    work = Path(tempfile.mkdtemp(prefix="lateline-incremental-"))
    corpus = work / "corpus"
    shutil.copytree(base.source.uri, corpus)
    raw = apply_overrides(
        base.model_dump(),
        [
            f"source.uri={corpus}",
            f"sink.uri={work / 'db'}",
            f"runtime.summary_dir={work / 'runs'}",
            "sink.commit_rows=100",
        ],
    )
    config = parse_config(raw)
    rows = []
    for label, prepare in [("first index", None), ("no-change re-index", None), ("one document edited", _edit_one)]:
        if prepare:
            prepare(corpus)
        summary = run_index(config)
        counts = summary["counts"]
        rows.append(
            (
                label,
                summary["wall_s"],
                counts["docs_written"],
                counts["docs_skipped_unchanged"],
                counts["forward_passes"],
                summary["source"]["objects_skipped_unchanged"],
            )
        )
    report = maintain(parse_config(apply_overrides(config.model_dump(), ["maintain.retain_versions_hours=0"])))
    print(f"{'run':<22} {'wall s':>8} {'written':>8} {'unchanged':>10} {'forwards':>9} {'objects skipped':>16}")
    for label, wall, written, unchanged, forwards, skipped in rows:
        print(f"{label:<22} {wall:>8.2f} {written:>8} {unchanged:>10} {forwards:>9} {skipped:>16}")
    print(f"no-change re-index / first index: {rows[1][1] / rows[0][1]:.3f} of the wall time")
    print("maintain:", json.dumps({k: report[k] for k in ("actions", "before", "after")}))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _edit_one(corpus: Path) -> None:
    path = next(corpus.glob("*.jsonl"))
    lines = path.read_text().splitlines()
    record = json.loads(lines[0])
    record["text"] += "\n\nOne added sentence changes this document."
    path.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")


if __name__ == "__main__":
    sys.exit(main())
