"""What every job shares: the ``--config`` / ``--set`` arguments and turning errors into exit codes."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any

from pipeline.aliases import AliasError, follow
from pipeline.config import ConfigError, JobConfig, load_config
from pipeline.interrupts import Terminated, sigterm_interrupts
from pipeline.lock import TableLocked
from pipeline.reembed import NothingToReembed, ReembedError
from pipeline.runner import EXIT_CODES, disconnect_ray
from pipeline.sink import TableMismatch
from pipeline.sources import SourceError

SUMMARY_KEYS = ("run_id", "status", "counts", "time_s", "throughput", "summary_path")


def job_parser(job: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``lateline <job>``, described by the module's docstring without its reST quoting."""
    return argparse.ArgumentParser(prog=f"lateline {job}", description=(doc or "").replace("``", ""))


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


def parse(
    parser: argparse.ArgumentParser, argv: list[str] | None, serving: bool = True
) -> tuple[argparse.Namespace, JobConfig | int]:
    """Parse the command line and load its config: ``(args, config)``, or ``(args, 2)`` after printing why."""
    args = parser.parse_args(argv)
    return args, load_or_exit(args, serving)


def load_or_exit(args: argparse.Namespace, serving: bool = True) -> JobConfig | int:
    """The validated config, or exit code 2 after printing every problem to stderr. With ``serving``, a
    ``sink.table`` that is an alias is resolved to the table it serves (see :func:`pipeline.aliases.follow`)."""
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as exc:
        where = " ".join([args.config, *(f"--set {item}" for item in args.overrides)])
        print(f"config error in {where}:", file=sys.stderr)
        for line in str(exc).splitlines():
            print(f"  {line}", file=sys.stderr)
        return EXIT_CODES["config"]
    if not serving:
        return config
    try:
        config, line = follow(config)
    except (AliasError, ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CODES["config"]
    if line:
        print(line, file=sys.stderr)
    return config


def fail(message: str, code: str) -> int:
    """Print ``message`` to stderr and return the exit code named ``code``."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_CODES[code]


def run_writing_job(job: str, work: Callable[[], dict[str, Any]]) -> int:
    """Run a job that writes the table; print the summary's head to stdout (also for a run that failed or was
    stopped once it had begun: the runner attaches its summary to the error); map failures to exit codes.
    SIGTERM stops it like Ctrl-C (exit 143 instead of 130; see :mod:`pipeline.interrupts`). While it runs,
    whatever is printed to stdout goes to stderr: Ray forwards its workers' stdout lines to the driver's stdout,
    and none may land beside the summary, the one thing a writing job prints there."""
    try:
        with sigterm_interrupts(), contextlib.redirect_stdout(sys.stderr):
            try:
                summary = work()
            finally:  # Ray ends while stdout still goes to stderr: no worker line follows the summary either
                disconnect_ray()
    except (Exception, KeyboardInterrupt) as exc:
        if getattr(exc, "run_summary", None) is not None:
            print_summary_head(exc.run_summary)
        return _failure_code(job, exc)
    print_summary_head(summary)
    return EXIT_CODES[summary["status"]]


def print_summary_head(summary: dict[str, Any]) -> None:
    print(json.dumps({key: summary.get(key) for key in SUMMARY_KEYS}, indent=2), flush=True)


def _failure_code(job: str, exc: BaseException) -> int:
    """Say on stderr why ``exc`` ended ``job``; its exit code."""
    if isinstance(exc, NothingToReembed):  # already done (a rerun after its promote): a success for a schedule
        print(str(exc), file=sys.stderr)
        return EXIT_CODES["ok"]
    if isinstance(exc, (ConfigError, SourceError, TableMismatch, ReembedError)):
        return fail(str(exc), "config")
    if isinstance(exc, TableLocked):
        return fail(str(exc), "locked")
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (ray job stop, Kubernetes, kill): wound down alike
        terminated = isinstance(exc, Terminated)
        how = "stopped (SIGTERM)" if terminated else "interrupted"
        print(f"{job} {how}: what it committed stays; run the same command again to resume", file=sys.stderr)
        return EXIT_CODES["terminated" if terminated else "interrupted"]
    return fail(f"{job} failed: {type(exc).__name__}: {exc}", "failed")
