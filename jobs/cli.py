"""The ``lateline`` command: ``lateline <job> [args]`` runs ``jobs.<job>.main(args)``."""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import PackageNotFoundError, version

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
    if argv[:1] == ["--version"]:
        try:
            print(f"lateline {version('lateline')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            print("lateline (not installed: version unknown)")
        return 0
    asked = bool(argv) and argv[0] in {"-h", "--help"}
    if not argv or asked or argv[0] not in JOBS:
        known = "\n".join(f"  {name:<11} {text}" for name, text in JOBS.items())
        usage = (
            f"usage: lateline <job> [options]  (lateline <job> --help for more; lateline --version)\n\njobs:\n{known}"
        )
        if asked:  # help that was asked for goes to stdout, so it can be paged
            print(usage)
            return 0
        print((f"lateline: unknown job {argv[0]!r}\n" if argv else "") + usage, file=sys.stderr)
        return 2
    try:
        return importlib.import_module(f"jobs.{argv[0]}").main(argv[1:])
    except BrokenPipeError:
        # The reader of stdout went away (`lateline deadletter list | head`): not an error of the job.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
