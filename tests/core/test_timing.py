"""core.timing: consecutive phases that add up to the wall time, back-dated laps kept inside what has passed."""

from __future__ import annotations

import time

import pytest

from core.timing import PHASES, Stopwatch, parse_line, process_started_at


def test_phases_add_up_to_the_wall_time() -> None:
    began = time.time()
    watch = Stopwatch(began)
    time.sleep(0.02)
    watch.lap("compose")
    time.sleep(0.03)
    watch.lap("mlflow")
    time.sleep(0.01)
    before = time.time()
    seconds = watch.so_far()
    after = time.time()  # a stall of this process (a loaded CI machine) falls between the two, not in the check
    assert seconds["startup"] == pytest.approx(0.02, abs=0.015)
    assert seconds["compose"] == pytest.approx(0.03, abs=0.015)
    assert before - began - 1e-3 <= sum(seconds.values()) <= after - began + 1e-3
    assert list(seconds)[: len(PHASES)] == list(PHASES)


def test_a_back_dated_lap_splits_a_wait_and_stays_inside_it() -> None:
    began = time.time()
    watch = Stopwatch(began)
    watch.lap("workers", at=began + 0.5)  # in the future: clamped to now
    assert watch.since <= time.time()
    watch.lap("load", at=began - 10)  # before the current phase began: clamped to its start
    assert watch.seconds["workers"] == 0.0 and watch.since >= began
    waited = watch.since
    time.sleep(0.02)
    watch.lap("load", at=waited + 0.01)  # the wait split: 0.01 s to "load" above, the rest from here
    watch.lap("work")
    assert watch.seconds["load"] == pytest.approx(0.02, abs=0.01)


def test_the_line_names_the_phases_that_took_time_and_parses_back() -> None:
    watch = Stopwatch(time.time() - 1.0)
    watch.lap("compose")
    line = watch.line()
    assert line.startswith("timing: startup 1.0s") and "compose" not in line  # < 0.05 s: left out
    parsed = parse_line(f"12:00:00 INFO orchestrator: {line}\nafter")
    assert parsed["startup"] == pytest.approx(1.0, abs=0.05) and parsed["compose"] == 0.0
    assert parsed["total"] == pytest.approx(sum(parsed[p] for p in PHASES), abs=0.1)
    assert parse_line("no such line") is None


def test_this_process_started_before_now() -> None:
    assert 0 <= time.time() - process_started_at() < 24 * 3600
