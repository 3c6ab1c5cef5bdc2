"""``lateline retire``: drop tables an alias no longer serves (with their dead-letter and manifest tables).

``--table T`` (repeatable) names them; ``--unserved`` takes every table of the alias (``<sink.table>`` and
``<sink.table>__*``, promoted or not) except the one it serves; ``--dry-run`` lists them and drops nothing. A
table a rollback could return to is dropped only when named or with ``--unserved``: after that, rollback to it
is refused.
"""

from __future__ import annotations

import json
import sys

from jobs.common import config_arguments, fail, job_parser, parse
from pipeline.aliases import AliasError, alias_state, check_retirable, model_tables, retire, served_tables
from pipeline.lock import TableLocked
from pipeline.runner import EXIT_CODES
from pipeline.sink import connect, did_you_mean, table_names


def main(argv: list[str] | None = None) -> int:
    p = job_parser("retire", __doc__)
    config_arguments(p)
    p.add_argument("--table", dest="tables", action="append", default=[], help="a table to drop (repeatable)")
    p.add_argument("--unserved", action="store_true", help="drop every table of the alias it does not serve")
    p.add_argument("--dry-run", action="store_true", help="list what would be dropped; drop nothing")
    args, config = parse(p, argv, serving=False)
    if isinstance(config, int):
        return config
    sink = config.sink
    db = connect(sink.uri, sink.storage_options)
    serving = alias_state(db, sink.table).serving
    if serving not in table_names(db):  # a mistyped sink.table or sink.uri must not pass as "nothing to retire"
        return fail(f"sink.table: no table {sink.table!r} at {sink.uri!r}{did_you_mean(db, sink.table)}", "config")
    tables = list(args.tables)
    if args.unserved:
        # A table of this family another alias serves (promoted there with --table) is live: left alone.
        live, family = served_tables(db, sink.table), model_tables(db, sink.table)
        others = [t for t in family if t in live and t != serving]
        if others:
            print(f"not retiring {', '.join(repr(t) for t in others)}: served by another alias", file=sys.stderr)
        tables += [t for t in family if t not in live and t not in tables]
    if not tables:
        if args.unserved:  # nothing left to clean up is a success, so a scheduled clean-up can run it blindly
            key = "would_drop" if args.dry_run else "dropped"
            print(json.dumps({"alias": sink.table, "serving": serving, key: []}, indent=2))
            print(
                f"nothing to retire: {sink.table!r} has no table besides {serving!r}, which it serves", file=sys.stderr
            )
            return EXIT_CODES["ok"]
        return fail("name tables with --table, or pass --unserved", "config")
    try:
        if args.dry_run:
            check_retirable(db, sink.uri, sink.table, tables, sink.storage_options)
            print(json.dumps({"alias": sink.table, "serving": serving, "would_drop": tables}, indent=2))
            return EXIT_CODES["ok"]
        dropped = retire(db, sink.uri, sink.table, tables, sink.storage_options)
    except AliasError as exc:
        return fail(str(exc), "config")
    except TableLocked as exc:
        return fail(str(exc), "locked")
    print(json.dumps({"alias": sink.table, "serving": serving, "dropped": dropped}, indent=2))
    return EXIT_CODES["ok"]


if __name__ == "__main__":
    sys.exit(main())
