"""``lateline rollback``: serve again the table that served before the last promote (atomically)."""

from __future__ import annotations

import json
import sys

from jobs.common import config_arguments, fail, job_parser, parse
from jobs.promote import describe_alias
from pipeline.aliases import AliasError, rollback
from pipeline.lock import TableLocked
from pipeline.runner import EXIT_CODES
from pipeline.sink import connect


def main(argv: list[str] | None = None) -> int:
    p = job_parser("rollback", __doc__)
    config_arguments(p)
    p.add_argument("--note", default="", help="a note kept in the alias history")
    args, config = parse(p, argv, serving=False)
    if isinstance(config, int):
        return config
    sink = config.sink
    try:
        state = rollback(connect(sink.uri, sink.storage_options), sink.uri, sink.table, args.note, sink.storage_options)
    except AliasError as exc:
        return fail(str(exc), "config")
    except TableLocked as exc:
        return fail(str(exc), "locked")
    print(json.dumps(describe_alias(state), indent=2))
    # Index runs since the promote wrote to the table that served then, not to this one.
    print(
        f"{sink.table!r} serves {state.serving!r} again; documents that changed in the source since the promote "
        f"are not in it: run `lateline index --config {args.config}` to catch it up (unchanged ones cost nothing)",
        file=sys.stderr,
    )
    return EXIT_CODES["ok"]


if __name__ == "__main__":
    sys.exit(main())
