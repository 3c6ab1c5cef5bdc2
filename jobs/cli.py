"""The ``lateline`` command: ``lateline <job> [args]`` runs ``jobs.<job>.main(args)``."""

from __future__ import annotations

import importlib
import sys

JOBS = {
    "index": "bring the table in line with the whole source (incremental)",
    "backfill": "index a prefix, glob or list of URIs; resumable, removes nothing",
    "search": "search a table with the model that built it",
    "deadletter": "list or replay records that could not be indexed",
    "maintain": "compact, clean up old versions, build indexes",
    "reembed": "build another model's vectors from the stored chunks, into a new table",
    "compare": "upgrade report: the serving table vs a re-embedded one",
    "promote": "switch sink.table (an alias) to another table, atomically",
    "rollback": "switch sink.table back to the table that served before",
    "retire": "drop tables an alias no longer serves",
    "eval": "retrieval quality on a BEIR dataset: no chunking vs naive vs late",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in JOBS:
        known = "\n".join(f"  {name:<11} {text}" for name, text in JOBS.items())
        print(f"usage: lateline <job> [options]  (lateline <job> --help for more)\n\njobs:\n{known}", file=sys.stderr)
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    return importlib.import_module(f"jobs.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
