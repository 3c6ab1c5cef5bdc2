"""``lateline reembed``: build the vectors of the config's model for the whole corpus, from the chunks the
serving table already stores (object storage is not read), into a new table named after the model.

Searches keep using the serving table meanwhile. Resumable: kill it and run the same command again. Then
check with ``lateline compare`` and switch with ``lateline promote`` (``lateline rollback`` switches back).
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import config_arguments, fail, job_parser, parse, run_writing_job
from pipeline.aliases import in_family, served_tables
from pipeline.config import JobConfig
from pipeline.reembed import run_reembed
from pipeline.sink import connect


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
        if args.limit is not None:  # a trial: promote refuses an incomplete table
            print(f"next: a trial of {args.limit} documents; run it again without --limit to finish", file=sys.stderr)
            return summary
        print(next_steps(args.config, config, args.source, summary), file=sys.stderr)
        return summary

    return run_writing_job("reembed", work)


def next_steps(config_path: str, config: JobConfig, source: str | None, summary: dict) -> str:
    """The compare and promote commands for the table just built. They act on ``sink.table``'s alias, unless
    ``--from`` named a table outside it: then on the alias serving that table (or that table's own name)."""
    table, alias = summary["table"]["name"], config.sink.table
    if source and not in_family(source, config.sink.table):
        served = served_tables(connect(config.sink.uri, config.sink.storage_options))
        alias = served.get(summary["source"]["table"], source)
    other = "" if alias == config.sink.table else f" --set sink.table={alias}"
    return (
        f"next: lateline compare --config {config_path}{other} --new {table}; then lateline promote --config "
        f"{config_path}{other} --table {table}"
    )


if __name__ == "__main__":
    sys.exit(main())
