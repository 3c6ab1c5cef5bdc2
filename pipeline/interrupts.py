"""SIGTERM as a graceful stop, like Ctrl-C.

``ray job stop``, Kubernetes (a deleted pod or RayJob, a Job's ``activeDeadlineSeconds``), ``docker stop`` and
``kill`` end a job with SIGTERM. Python's default handling ends the process at once, without a final run summary,
and the driver of ``ray.init`` replaces it with ``sys.exit(15)``, which a run would report as a failure. Inside
:func:`sigterm_interrupts`, SIGTERM raises :class:`Terminated` in the main thread instead: a
``KeyboardInterrupt``, so a run winds down exactly as on Ctrl-C (what it committed stays, its summary says
``interrupted`` and counts it) and the job exits 143.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM inside :func:`sigterm_interrupts`. A subclass of
    ``KeyboardInterrupt`` so that whatever winds down on Ctrl-C (the runner, Ray Data's executor) winds down on
    it too; catch it before ``KeyboardInterrupt`` to tell the two apart."""


def _raise_terminated(signum: int, frame: object) -> None:
    # One graceful stop: a second SIGTERM during the wind-down ends the process at once, as a second Ctrl-C
    # interrupts the clean-up of the first.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated("SIGTERM")


def _in_main_thread() -> bool:
    # Python runs signal handlers in the main thread only, and only it may install them.
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread; the previous handler is restored
    after it. Outside the main thread it does nothing (no handler can be installed there)."""
    if not _in_main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        if before is not None:  # None: installed from C, cannot be restored from Python
            signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def keeping_sigterm_handler() -> Iterator[None]:
    """Restore SIGTERM's handler after the block: ``ray.init`` installs its own (``sys.exit(15)``) over the
    caller's as it starts. When the caller's is :func:`sigterm_interrupts`'s and a SIGTERM came during the block,
    Ray's ``SystemExit`` becomes :class:`Terminated`, as if the caller's handler had run."""
    if not _in_main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    except SystemExit as exc:
        if before is not _raise_terminated or exc.code != signal.SIGTERM:
            raise
        before = signal.SIG_DFL  # what the caller's handler leaves for a second SIGTERM
        raise Terminated("SIGTERM") from None
    finally:
        if before is not None:  # None: installed from C, cannot be restored from Python
            signal.signal(signal.SIGTERM, before)
