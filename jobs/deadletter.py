"""``lateline deadletter list|replay``: see what could not be indexed, and index it again after a fix."""

from __future__ import annotations

import argparse
import json
import sys

from jobs.common import config_arguments, fail, job_parser, load_or_exit, run_writing_job
from pipeline.deadletters import dead_letter_table_name, read_dead_letters
from pipeline.runner import EXIT_CODES, run_index
from pipeline.sink import missing_table, open_table
from pipeline.sources import list_uris

SNIPPET_CHARS = 80


def parser() -> argparse.ArgumentParser:
    p = job_parser("deadletter", __doc__)
    p.add_argument("action", choices=["list", "replay"])
    config_arguments(p)
    p.add_argument("--json", action="store_true", help="list: one JSON object per line")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.json and args.action != "list":
        return fail(f"--json: only `list` prints dead letters; `{args.action}` prints a run summary", "config")
    config = load_or_exit(args)
    if isinstance(config, int):
        return config
    sink = config.sink
    names = (sink.table, dead_letter_table_name(sink.table))
    if all(open_table(sink.uri, name, sink.storage_options) is None for name in names):
        return fail(missing_table(sink.uri, sink.table, sink.storage_options), "config")
    letters = read_dead_letters(config.sink.uri, config.sink.table, config.sink.storage_options)
    if args.action == "list":
        return _list(letters.to_pylist(), args.json)
    sources = sorted({row["source_uri"] for row in letters.to_pylist() if row["source_uri"]})
    if not sources:
        print("no dead letters to replay", file=sys.stderr)
        return EXIT_CODES["ok"]
    try:
        objects = list_uris(config.source, sources, missing_ok=True)
    except ValueError as exc:
        return fail(str(exc), "config")
    gone = sorted(set(sources) - {obj.path for obj in objects})
    if gone:
        # Their dead letters stay until an index run sees the objects are gone; replaying cannot read them.
        print(
            f"{len(gone)} object(s) with dead letters no longer exist, not replayed: {', '.join(gone[:5])}",
            file=sys.stderr,
        )
    return run_writing_job("replay", lambda: run_index(config, job="replay", objects=objects))


def printable(text: str) -> str:
    """``text`` with its control and other unprintable characters escaped (``\\x1b``): a record's bytes must
    not drive the terminal that lists it."""
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


def _list(rows: list[dict], as_json: bool) -> int:
    for row in rows:
        if as_json:
            print(json.dumps(row, default=str))
        else:
            snippet = " ".join((row["snippet"] or "").split())[:SNIPPET_CHARS]
            fields = (row["source_uri"], row["doc_id"] or "-", row["detail"], snippet)
            uri, doc_id, detail, snippet = (printable(value or "") for value in fields)
            print(f"{row['reason']:<18} {uri}  {doc_id}  {detail}  | {snippet}")
    print(f"{len(rows)} dead letter" + ("" if len(rows) == 1 else "s"), file=sys.stderr)
    return EXIT_CODES["ok"]


if __name__ == "__main__":
    sys.exit(main())
