"""eval.* placement and worker settings are checked before anything starts, each error one line naming its field;
an evaluator without shards (the plain Evaluator protocol) runs whole on one worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from jobs.evaluate import sharded
from jobs.evaluate.config import EvalConfig
from jobs.evaluate.driver import _check
from tests.orchestrator.test_bad_data import _assert_failed

BAD = {"num_workers": (0, "must be >= 1 (got 0)"), "batch_size": (0, "must be >= 1 (got 0)"),
       "threads": (0, "must be >= 1 (got 0)"), "cpus_per_worker": (0.0, "must be > 0 (got 0.0)"),
       "use_gpu": ("sometimes", "must be one of auto, true, false (got 'sometimes')"),
       "dtype": ("int8", "must be one of auto, float32, bfloat16, float16 (got 'int8')")}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_value_names_its_field(name: str) -> None:
    value, message = BAD[name]
    with pytest.raises(ConfigError) as err:
        _check(EvalConfig(**{name: value}))
    assert err.value.field == f"eval.{name}" and message in str(err.value)


def test_good_values_pass() -> None:
    for use_gpu in ("auto", "true", "false", True, False):
        _check(EvalConfig(use_gpu=use_gpu, dtype="bfloat16", num_workers=4, cpus_per_worker=0.5))


def test_cli_refuses_a_bad_value_before_the_run_opens(storage: Path, cli_in_process) -> None:
    result = cli_in_process(["job=evaluate", "eval.use_gpu=maybe"], storage)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: config error: eval.use_gpu: must be one of auto, true, false (got 'maybe')"]
    assert "MLflow run id" not in result.stdout


def test_more_workers_than_batches_fails_before_ray(storage: Path, cli_in_process) -> None:
    result = cli_in_process(["job=evaluate", "eval.num_samples=8", "eval.seq_len=32", "eval.batch_size=4",
                             "eval.num_workers=3"], storage)
    _assert_failed(result, storage, "config error: eval.num_workers: 3 workers but only 2 batches of "
                                    "eval.batch_size=4")


class _Whole:
    """An evaluator with the Evaluator protocol only: score(model, inputs, e)."""

    def score(self, model: str, inputs: list[int], e: EvalConfig) -> dict[str, int]:
        return {"sum": sum(inputs), "of": model}


def test_an_evaluator_without_shards_runs_whole_on_one_worker() -> None:
    e = EvalConfig(metric="whole")
    assert sharded.split(_Whole(), [1, 2, 3], e, 1) == [[1, 2, 3]]
    with pytest.raises(ConfigError, match="eval=whole scores on one worker") as err:
        sharded.split(_Whole(), [1, 2, 3], e, 2)
    assert err.value.field == "eval.num_workers"
    raw = sharded.score(_Whole(), {"model": "m", "compare_to": "r"}, [1, 2, 3], e)
    assert raw == {"model": {"sum": 6, "of": "m"}, "compare_to": {"sum": 6, "of": "r"}}
    assert sharded.merge(_Whole(), [raw]) is raw


def test_slices_are_contiguous_and_balanced() -> None:
    assert sharded.slices(7, 3) == [slice(0, 3), slice(3, 5), slice(5, 7)]
    assert sharded.concat([{"a": [1], "n": 2}, {"a": [2, 3], "n": 5}]) == {"a": [1, 2, 3], "n": 7}
