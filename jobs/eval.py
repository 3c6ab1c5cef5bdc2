"""``lateline eval``: retrieval quality on a BEIR-layout dataset, side by side: no chunking, naive chunking and
late chunking (same model, same chunker), or an existing table. Writes results.json, results.md, results.png."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.common import config_arguments, fail, job_parser, parse
from pipeline.config import ConfigError
from pipeline.evaluation import DatasetError, run_eval
from pipeline.runner import EXIT_CODES
from pipeline.search import TableNotFound
from pipeline.sink import TableMismatch


def _sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers like 128,256 (got {text!r})")
    return sizes


def main(argv: list[str] | None = None) -> int:
    p = job_parser("eval", __doc__)
    config_arguments(p)
    p.add_argument("--dataset", required=True, help="a BEIR-layout directory")
    p.add_argument("--out", type=Path, default=Path("eval-results"), help="output folder (default eval-results)")
    p.add_argument("--chunk-sizes", type=_sizes, default=None, help="comma-separated chunk sizes (default: config)")
    p.add_argument("--table", help="evaluate this existing table instead of indexing the corpus")
    args, config = parse(p, argv, serving=False)
    if isinstance(config, int):
        return config
    try:
        report = run_eval(config, args.dataset, args.out, args.chunk_sizes or [config.chunking.size], args.table)
    except DatasetError as exc:
        return fail(str(exc), "config")
    except (ConfigError, TableNotFound, TableMismatch) as exc:
        return fail(str(exc), "config")
    print((args.out / "results.md").read_text())
    written = ", ".join(str(args.out / name) for name in ("results.json", "results.md", "results.png"))
    print(f"results: {written} ({report['queries']} queries)")
    return EXIT_CODES["ok"]


if __name__ == "__main__":
    sys.exit(main())
