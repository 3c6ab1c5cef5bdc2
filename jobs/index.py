"""``lateline index``: chunk, late-embed and write a whole source into the LanceDB table."""

from __future__ import annotations

import argparse
import json
import sys

from jobs.common import config_arguments, fail, load_or_exit
from pipeline.runner import EXIT_CODES, run_index
from pipeline.sink import TableMismatch
from pipeline.sources import SourceError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lateline index", description=__doc__)
    config_arguments(p)
    p.add_argument("--limit", type=int, default=None, help="index at most N documents (for a trial run)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.limit is not None and args.limit <= 0:
        return fail(f"--limit: must be > 0 (got {args.limit})", "config")
    config = load_or_exit(args)
    if isinstance(config, int):
        return config
    try:
        summary = run_index(config, limit=args.limit)
    except (SourceError, TableMismatch) as exc:
        return fail(str(exc), "config")
    except Exception as exc:
        return fail(f"index failed: {type(exc).__name__}: {exc}", "failed")
    print(json.dumps({k: summary[k] for k in ("status", "counts", "time_s", "throughput", "summary_path")}, indent=2))
    return EXIT_CODES["ok"]


if __name__ == "__main__":
    sys.exit(main())
