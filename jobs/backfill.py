"""``lateline backfill``: index a prefix, a glob or a list of URIs; resumable, never removes anything.

Kill it at any moment and run the same command again: what was committed is skipped (same fingerprint), the
rest is embedded, and the table ends equal to a clean run's, without duplicates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.common import config_arguments, fail, job_parser, parse, run_writing_job
from pipeline.runner import run_index
from pipeline.sources import list_uris


def parser() -> argparse.ArgumentParser:
    p = job_parser("backfill", __doc__)
    config_arguments(p)
    p.add_argument("uris", nargs="*", help="URIs, prefixes or globs to backfill (default: source.uri)")
    p.add_argument("--from-list", type=Path, help="a file with one URI per line (blank lines and # comments skipped)")
    return p


def main(argv: list[str] | None = None) -> int:
    args, config = parse(parser(), argv)
    if isinstance(config, int):
        return config
    uris = list(args.uris)
    if args.from_list:
        if not args.from_list.is_file():
            return fail(f"--from-list: no such file ({str(args.from_list)!r})", "config")
        lines = (line.strip() for line in args.from_list.read_text().splitlines())
        uris += [line for line in lines if line and not line.startswith("#")]
    return run_writing_job(
        "backfill", lambda: run_index(config, job="backfill", objects=list_uris(config.source, uris) if uris else None)
    )


if __name__ == "__main__":
    sys.exit(main())
