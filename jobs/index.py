"""``lateline index``: bring the table in line with the whole source: new and changed documents embedded,
unchanged ones skipped for free, documents gone from the source removed."""

from __future__ import annotations

import argparse
import sys

from jobs.common import config_arguments, fail, load_or_exit, run_writing_job
from pipeline.runner import run_index


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lateline index", description=__doc__)
    config_arguments(p)
    p.add_argument("--limit", type=int, default=None, help="index at most N documents (a trial; removes nothing)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.limit is not None and args.limit <= 0:
        return fail(f"--limit: must be > 0 (got {args.limit})", "config")
    config = load_or_exit(args)
    if isinstance(config, int):
        return config
    return run_writing_job("index", lambda: run_index(config, limit=args.limit))


if __name__ == "__main__":
    sys.exit(main())
