"""What every job shares: the ``--config`` / ``--set`` arguments and turning errors into exit codes."""

from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError, JobConfig, load_config
from pipeline.runner import EXIT_CODES


def config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config PATH`` and repeatable ``--set dotted.key=value``."""
    parser.add_argument("--config", required=True, help="job config YAML (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set chunking.size=128 (repeatable)",
    )


def load_or_exit(args: argparse.Namespace) -> JobConfig | int:
    """The validated config, or exit code 2 after printing every problem to stderr."""
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error in {args.config}:", file=sys.stderr)
        for line in str(exc).splitlines():
            print(f"  {line}", file=sys.stderr)
        return EXIT_CODES["config"]


def fail(message: str, code: str) -> int:
    """Print ``message`` to stderr and return the exit code named ``code``."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_CODES[code]
