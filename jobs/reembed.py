"""``lateline reembed``: build the vectors of the config's model for the whole corpus, from the chunks the
serving table already stores (object storage is not read), into a new table named after the model.

Searches keep using the serving table meanwhile. Resumable: kill it and run the same command again. Then
check with ``lateline compare`` and switch with ``lateline promote`` (``lateline rollback`` switches back).
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import config_arguments, fail, job_parser, parse, run_writing_job
from pipeline.reembed import run_reembed


def parser() -> argparse.ArgumentParser:
    p = job_parser("reembed", __doc__)
    config_arguments(p)
    p.add_argument(
        "--from",
        dest="source",
        help="the table or alias to re-embed (default: sink.table; an alias stands for the table it serves)",
    )
    p.add_argument(
        "--to",
        dest="target",
        help=(
            "the new table (default: <sink.table>__<model>-<8 hex of the settings digest>, with -float16 for "
            "float16 vectors; with --from a table outside sink.table's, <that table>__...); never a table an "
            "alias serves"
        ),
    )
    p.add_argument("--limit", type=int, default=None, help="re-embed at most N documents (a trial)")
    return p


def main(argv: list[str] | None = None) -> int:
    args, config = parse(parser(), argv, serving=False)
    if isinstance(config, int):
        return config
    if args.limit is not None and args.limit <= 0:
        return fail(f"--limit: must be > 0 (got {args.limit})", "config")

    def work() -> dict:
        summary = run_reembed(config, args.source, args.target, args.limit)
        table = summary["table"]["name"]
        if args.limit is not None:  # a trial: promote refuses an incomplete table
            print(f"next: a trial of {args.limit} documents; run it again without --limit to finish", file=sys.stderr)
            return summary
        print(
            f"next: lateline compare --config {args.config} --new {table}; then lateline promote --config "
            f"{args.config} --table {table}",
            file=sys.stderr,
        )
        return summary

    return run_writing_job("reembed", work)


if __name__ == "__main__":
    sys.exit(main())
