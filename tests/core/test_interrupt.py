"""core/interrupt.py: the first SIGTERM/SIGINT stops at a safe point where the code has one, else at once; a
second stops at once; the exit code is 128 + the signal's number."""

from __future__ import annotations

import os
import signal
import time

import pytest

from core import interrupt


@pytest.fixture(autouse=True)
def handlers():
    saved = {sig: signal.getsignal(sig) for sig in interrupt.SIGNALS}
    interrupt._requested = None
    interrupt.install()
    yield
    interrupt._requested = None
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _deliver(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # Python runs the handler at the next bytecode boundary of the main thread


def test_outside_a_safe_point_region_a_signal_stops_at_once() -> None:
    with pytest.raises(interrupt.Interrupted) as caught:
        _deliver(signal.SIGTERM)
    assert caught.value.exit_code == 143 and str(caught.value) == "interrupted by SIGTERM"
    assert isinstance(caught.value, KeyboardInterrupt)  # every cleanup path for Ctrl-C runs


def test_inside_one_the_first_signal_asks_and_the_safe_point_stops() -> None:
    told = []
    with interrupt.safe_points(on_request=told.append):
        _deliver(signal.SIGINT)  # no exception here: the job goes on to its safe point
        deadline = time.time() + 5
        while not told and time.time() < deadline:
            time.sleep(0.01)
        assert told == [signal.SIGINT] and interrupt.requested() == signal.SIGINT
        with pytest.raises(interrupt.Interrupted) as caught:
            interrupt.check()
    assert caught.value.exit_code == 130


def test_a_second_signal_stops_at_once() -> None:
    with interrupt.safe_points(), pytest.raises(interrupt.Interrupted):
        _deliver(signal.SIGTERM)
        _deliver(signal.SIGTERM)
