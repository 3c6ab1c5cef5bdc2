"""``lateline search``: embed a query with the table's model and print the best chunks."""

from __future__ import annotations

import argparse
import sys

from jobs.common import config_arguments, fail, job_parser, load_or_exit
from pipeline.config import ConfigError
from pipeline.runner import EXIT_CODES
from pipeline.search import TableNotFound, search
from pipeline.sink import TableMismatch

PREVIEW_CHARS = 240


def parser() -> argparse.ArgumentParser:
    p = job_parser("search", __doc__)
    config_arguments(p)
    p.add_argument("query", help="the query text")
    p.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    p.add_argument("--by-document", action="store_true", help="best chunk per document, top k documents")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.k <= 0:
        return fail(f"-k: must be > 0 (got {args.k})", "config")
    if not args.query.strip():  # an empty query embeds to a vector near nothing in particular: ranks mean nothing
        return fail(f"query: must have some text (got {args.query!r})", "config")
    config = load_or_exit(args)
    if isinstance(config, int):
        return config
    try:
        [hits] = search(config, [args.query], k=args.k, by_document=args.by_document)
    except (ConfigError, TableNotFound, TableMismatch) as exc:
        return fail(str(exc), "config")
    for rank, hit in enumerate(hits, start=1):
        text = " ".join(hit.text.split())
        text = text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."
        print(f"{rank:>3}  {hit.score:.4f}  {hit.doc_id}  [{hit.char_start}:{hit.char_end}]  {text}")
    if not hits:
        print("no results (is the table empty?)", file=sys.stderr)
    return EXIT_CODES["ok"]


if __name__ == "__main__":
    sys.exit(main())
