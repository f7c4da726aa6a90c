"""jobs/quantize/blockloop.py's record of a finished block: a non-finite error metric stops the job, naming the
block (a NaN washed out by calibration would otherwise be exported as a normal-looking model)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from core.errors import NumericError
from jobs.quantize.blockloop import _record


class Recorder:
    def __init__(self) -> None:
        self.logged: list = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.logged.append((step, metrics))


class Bar:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **_: str) -> None: ...


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_block_metric_stops_the_job(bad: float) -> None:
    ctx = SimpleNamespace(run=Recorder())
    with pytest.raises(NumericError, match=f"numeric error: block 2: block_rel_err is {bad}"):
        _record(2, {"block_rel_err": bad, "block_mse": 1e-3, "block_seconds": 0.1}, ctx, Bar())
    assert ctx.run.logged == []  # nothing of it reaches MLflow as a result
    _record(3, {"block_rel_err": 0.05, "block_mse": 1e-3, "block_seconds": 0.1}, ctx, Bar())
    assert ctx.run.logged[0][0] == 3
