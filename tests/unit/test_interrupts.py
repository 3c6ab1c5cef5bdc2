"""SIGTERM raises Terminated inside sigterm_interrupts, once; handlers are restored after it and after ray.init."""

from __future__ import annotations

import os
import signal
import time

import pytest

from pipeline.interrupts import Terminated, keeping_sigterm_handler, sigterm_interrupts


def _sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(1)  # the handler runs at the next bytecode boundary; never reached when it raises


def test_sigterm_inside_the_block_raises_terminated_a_keyboard_interrupt_and_arms_the_default_for_a_second():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as raised, sigterm_interrupts():
        _sigterm_self()
    assert isinstance(raised.value, KeyboardInterrupt) and str(raised.value) == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before, "the caller's handler is back after the block"


def test_a_second_sigterm_during_the_wind_down_gets_the_default_action():
    seen = []
    with sigterm_interrupts():
        try:
            _sigterm_self()
        except Terminated:
            seen.append(signal.getsignal(signal.SIGTERM))
    assert seen == [signal.SIG_DFL]


def test_the_handler_before_ray_init_is_kept_though_the_block_replaces_it():
    def mine(signum, frame):
        raise AssertionError("not called")

    before = signal.signal(signal.SIGTERM, mine)
    try:
        with keeping_sigterm_handler():
            signal.signal(signal.SIGTERM, lambda signum, frame: None)  # what ray.init does
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_sigterm_while_ray_init_holds_its_own_handler_still_stops_the_job_as_terminated():
    import sys

    with pytest.raises(Terminated), sigterm_interrupts(), keeping_sigterm_handler():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # what ray.init installs
        _sigterm_self()


def test_ray_inits_exit_passes_through_when_the_caller_did_not_ask_for_terminated():
    import sys

    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit), keeping_sigterm_handler():
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
            _sigterm_self()
    finally:
        signal.signal(signal.SIGTERM, before)


def test_outside_the_main_thread_nothing_is_installed():
    import threading

    before, seen = signal.getsignal(signal.SIGTERM), []

    def worker() -> None:
        with sigterm_interrupts(), keeping_sigterm_handler():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [before] and signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize(
    ("raised", "code", "line"),
    [(Terminated("SIGTERM"), 143, "index stopped (SIGTERM): "), (KeyboardInterrupt(), 130, "index interrupted: ")],
)
def test_a_writing_job_stopped_or_interrupted_exits_with_the_shells_code_and_says_how_to_resume(
    raised: BaseException, code: int, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.common import run_writing_job

    def work() -> dict:
        raise raised

    assert run_writing_job("index", work) == code
    assert line + "what it committed stays; run the same command again to resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("raised", "code"), [(Terminated("SIGTERM"), 143), (RuntimeError("disk full"), 1), (ValueError("bad"), 1)]
)
def test_a_run_that_began_prints_its_summary_head_however_it_ends(
    raised: BaseException, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from jobs.common import run_writing_job

    status = "interrupted" if isinstance(raised, KeyboardInterrupt) else "failed"
    raised.run_summary = {"run_id": "r", "status": status, "counts": {"docs_written": 3}, "summary_path": "p"}

    def work() -> dict:
        raise raised

    assert run_writing_job("index", work) == code
    out, err = capsys.readouterr()
    assert json.loads(out) == {**dict.fromkeys(("time_s", "throughput")), **raised.run_summary}
    assert "error: index failed" in err if status == "failed" else "index stopped (SIGTERM)" in err


def test_while_a_writing_job_runs_stdout_goes_to_stderr_so_only_the_summary_is_on_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from jobs.common import run_writing_job

    summary = {"run_id": "r", "status": "ok", "counts": {}, "time_s": {}, "throughput": {}, "summary_path": "p"}

    def work() -> dict:
        print("(MapWorker pid=123) a line a Ray worker printed")  # Ray forwards these to the driver's stdout
        return summary

    assert run_writing_job("index", work) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == summary, "stdout holds the summary's JSON and nothing else"
    assert "(MapWorker pid=123) a line a Ray worker printed" in err
