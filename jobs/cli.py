"""The ``lateline`` command: ``lateline <job> [args]`` runs ``jobs.<job>.main(args)``."""

from __future__ import annotations

import importlib
import sys

JOBS = {
    "index": "chunk, late-embed and write a source into a LanceDB table",
    "search": "search a table with the model that built it",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in JOBS:
        known = "\n".join(f"  {name:<8} {text}" for name, text in JOBS.items())
        print(f"usage: lateline <job> [options]\n\njobs:\n{known}", file=sys.stderr)
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    return importlib.import_module(f"jobs.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
