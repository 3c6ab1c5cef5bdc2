"""``lateline promote``: make a table (by default the config's model's re-embed table) the one ``sink.table``
serves, atomically. Searches and scheduled index jobs follow at once; the old table is kept for rollback.

Refused while the table is incomplete: missing documents of the serving table (``--force`` overrides that
check), empty, or still being written (exit 4).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from jobs.common import config_arguments, fail, job_parser, parse
from pipeline.aliases import MISSING_DOCUMENTS, AliasError, AliasState, promote, promotion_problems
from pipeline.config import ConfigError, JobConfig
from pipeline.fingerprint import embedding_settings
from pipeline.lock import TableLocked
from pipeline.model import describe_model
from pipeline.reembed import target_name
from pipeline.runner import EXIT_CODES
from pipeline.sink import connect


def parser() -> argparse.ArgumentParser:
    p = job_parser("promote", __doc__)
    config_arguments(p)
    p.add_argument("--table", help="the table to serve (default: the re-embed table of the config's model)")
    p.add_argument("--note", default="", help="a note kept in the alias history")
    p.add_argument("--force", action="store_true", help="promote even if documents are missing")
    return p


def main(argv: list[str] | None = None) -> int:
    args, config = parse(parser(), argv, serving=False)
    if isinstance(config, int):
        return config
    sink = config.sink
    try:
        table = args.table or default_table(config)
    except ConfigError as exc:
        return fail(str(exc), "config")
    db = connect(sink.uri, sink.storage_options)

    def check() -> list[str]:
        problems = promotion_problems(db, sink.uri, sink.table, table)
        return [message for kind, message in problems if not (args.force and kind == MISSING_DOCUMENTS)]

    try:
        state = promote(db, sink.uri, sink.table, table, args.note, sink.storage_options, check)
    except AliasError as exc:
        return fail(str(exc), "config")
    except TableLocked as exc:
        return fail(f"not promoting {table!r}: {exc}", "locked")
    print(json.dumps(describe_alias(state), indent=2))
    return EXIT_CODES["ok"]


def default_table(config: JobConfig) -> str:
    """The table ``lateline reembed`` builds for this config by default."""
    _, _, _, identity = describe_model(config.model, config.embedding.document_prefix)
    settings = embedding_settings(config.chunking, config.embedding, identity)
    return target_name(config.sink.table, identity, settings, config.sink.vector_dtype)


def describe_alias(state: AliasState) -> dict[str, Any]:
    """The alias as JSON data: what it serves, the rollback stack and its history."""
    return {"alias": state.name, "serving": state.serving, "stack": list(state.stack), "history": list(state.history)}


if __name__ == "__main__":
    sys.exit(main())
