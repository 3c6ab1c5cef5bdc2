"""``lateline index``: bring the table in line with the whole source: new and changed documents embedded,
unchanged ones skipped for free, documents gone from the source removed."""

from __future__ import annotations

import argparse
import json
import sys

from jobs.common import config_arguments, fail, job_parser, load_or_exit, run_writing_job
from pipeline.config import ConfigError, JobConfig
from pipeline.dryrun import dry_run
from pipeline.runner import EXIT_CODES, run_index
from pipeline.sink import TableMismatch
from pipeline.sources import SourceError


def parser() -> argparse.ArgumentParser:
    p = job_parser("index", __doc__)
    config_arguments(p)
    p.add_argument("--limit", type=int, default=None, help="index at most N documents (a trial; removes nothing)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list and sample the source, estimate documents, tokens and run time; write nothing",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.limit is not None and args.limit <= 0:
        return fail(f"--limit: must be > 0 (got {args.limit})", "config")
    config = load_or_exit(args)
    if isinstance(config, int):
        return config
    if args.dry_run:
        return _dry_run(config, args.limit)
    return run_writing_job("index", lambda: run_index(config, limit=args.limit))


def _dry_run(config: JobConfig, limit: int | None) -> int:
    try:
        estimate = dry_run(config, limit)
    except (ConfigError, SourceError, TableMismatch) as exc:
        return fail(str(exc), "config")
    print(json.dumps(estimate, indent=2))
    for warning in estimate["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    seconds = estimate["estimated_seconds"]
    if not estimate["objects_to_read"]:
        print("nothing to read: every object is unchanged since the last run (Ray would not start)", file=sys.stderr)
        return EXIT_CODES["ok"]
    print(
        f"about {estimate['estimated_docs']:,} documents, {estimate['estimated_tokens']:,} tokens; "
        f"{estimate['estimated_unchanged_fraction'] or 0:.0%} unchanged; "
        f"about {seconds / 60:,.1f} minutes at {estimate['tokens_per_s']:,.0f} tokens/s "
        f"({estimate['throughput_basis']})"
        if seconds is not None
        else "no estimate: nothing to embed was sampled",
        file=sys.stderr,
    )
    return EXIT_CODES["ok"]


if __name__ == "__main__":
    sys.exit(main())
