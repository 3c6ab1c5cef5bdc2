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
