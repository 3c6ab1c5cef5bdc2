"""``lateline compare``: the upgrade report between the serving table and a new one (by default the re-embed
table of the config's model): top-k overlap on a sample of queries, score distributions, row-count parity and
documents missing on either side. Each table is searched with its own model. Writes compare.json, compare.md
and compare.png; exits 0 when every check of the verdict passes, 1 when one fails.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from jobs.common import config_arguments, fail, job_parser, parse
from jobs.promote import default_table
from pipeline.aliases import pointed_at, serving_table
from pipeline.compare import QueryFileError, compare_report, load_queries, sample_queries, table_side, write_report
from pipeline.config import ConfigError
from pipeline.lock import TableLock
from pipeline.runner import EXIT_CODES
from pipeline.search import search
from pipeline.sink import TableMismatch, connect, did_you_mean, table_names


def parser() -> argparse.ArgumentParser:
    p = job_parser("compare", __doc__)
    config_arguments(p)
    p.add_argument("--old", help="the old table (default: the one sink.table serves)")
    p.add_argument("--new", help="the new table (default: the re-embed table of the config's model)")
    p.add_argument("--queries", help="queries file: .jsonl with text/query fields, or one query per line")
    p.add_argument("--sample", type=int, default=50, help="queries sampled from the old table's chunks (default 50)")
    p.add_argument("-k", type=int, default=10, help="top k compared (default 10)")
    p.add_argument(
        "--min-overlap", type=float, default=0.5, help="verdict: least mean document overlap@k (default 0.5)"
    )
    p.add_argument(
        "--out", default="compare-results", help="directory for compare.json/.md/.png (default: compare-results)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args, config = parse(parser(), argv, serving=False)
    if isinstance(config, int):
        return config
    for flag, value in (("-k", args.k), ("--sample", args.sample)):
        if value <= 0:
            return fail(f"{flag}: must be > 0 (got {value})", "config")
    if not 0 <= args.min_overlap <= 1:
        return fail(f"--min-overlap: must be between 0 and 1 (got {args.min_overlap})", "config")
    db = connect(config.sink.uri, config.sink.storage_options)
    old_name = args.old or serving_table(db, config.sink.table)
    try:
        new_name = args.new or default_table(config)
    except ConfigError as exc:
        return fail(str(exc), "config")
    if old_name == new_name:  # e.g. after the promote: the alias serves the re-embedded table itself
        return fail(
            f"--old and --new are both {old_name!r}: a table compared with itself always passes; name the table "
            f"served before (e.g. --old {config.sink.table}) or the one to compare with",
            "config",
        )
    for flag, name in (("--old", old_name), ("--new", new_name)):
        if name not in table_names(db):
            hint = "build it with `lateline reembed`" if flag == "--new" else "run `lateline index`"
            where = f"{config.sink.uri!r}{did_you_mean(db, name)}"
            return fail(f"{flag}: no table {name!r} at {where}; {hint} or name another", "config")
    for name in (old_name, new_name):
        holder = TableLock(config.sink.uri, name, "compare", config.sink.storage_options).live_holder()
        if holder is not None:  # said, not refused: comparing a re-embed while it runs is a fair preview
            print(
                f"compare: {name!r} is being written by run {holder.get('run_id')} (pid {holder.get('pid')}); "
                "this report shows it as it is now: compare again when that job has finished",
                file=sys.stderr,
            )
    old_table, new_table = db.open_table(old_name), db.open_table(new_name)
    try:
        queries = load_queries(args.queries) if args.queries else sampled_queries(old_table, args.sample)
        old_hits = search(pointed_at(config, db, old_name), queries, k=args.k)
        new_hits = search(pointed_at(config, db, new_name), queries, k=args.k)
    except (ConfigError, QueryFileError, TableMismatch) as exc:
        return fail(str(exc), "config")
    old, new = table_side(old_table, old_name), table_side(new_table, new_name)
    report = compare_report(queries, old_hits, new_hits, old, new, args.k, min_mean_doc_overlap=args.min_overlap)
    paths = write_report(report, args.out)
    print(paths["markdown"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return EXIT_CODES["ok"] if report["verdict"]["passed"] else EXIT_CODES["failed"]


def sampled_queries(table: Any, n: int) -> list[str]:
    """``n`` pseudo-queries from a sample of the table's chunk texts (deterministic for one table version)."""
    rows = min(table.count_rows(), max(20 * n, 1_000))
    texts = table.search().select(["text"]).limit(rows).to_arrow()["text"].to_pylist()
    return sample_queries(texts, n)


if __name__ == "__main__":
    sys.exit(main())
