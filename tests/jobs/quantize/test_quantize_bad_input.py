"""Bad quantize input: one line naming the field, exit 2, Ray never started; a bad config value leaves no MLflow run
(checked before it opens), a mismatch found in the model or data leaves it FAILED."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from tests.conftest import mlflow_run, run_id_of
from tests.jobs.conftest import TINY_QUANT


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quant-bad") / "runs"


CASES = {
    "unknown_algorithm": (["quant.algorithm=gptqq"],
                          "config error: quant.algorithm: unknown quantization algorithm 'gptqq' (known: awq, gptq"),
    "unsupported_bits": (["quant.format=w6g128"], "config error: quant.format: unsupported weight bits 6 in 'w6g128'"),
    "unsupported_group": (["quant.format=w4g100"], "config error: quant.format: unsupported group size 100"),
    "group_does_not_divide": (["+model.overrides.intermediate_size=320"],  # overrides TINY_QUANT's 512
                              "config error: quant.format: group size 128 of 'w4g128' does not divide "
                              "in_features=320 of module 'model.layers.0.mlp.down_proj'"),
    "too_little_data": (["calib.num_samples=4000"],
                        "config error: calib: need 4000 x 64 = 256000 tokens, data/text/train.txt gives only"),
    "missing_model_path": (["model=hf"], "config error: model.path: required for model=hf"),
    "bad_algorithm_option": (["quant=gptq", "+quant.options.dampp=1"],
                             "config error: quant.options: unknown option(s) dampp"),
}
CONFIG_VALUES = {"unknown_algorithm", "unsupported_bits", "unsupported_group", "bad_algorithm_option"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case: str, storage: Path, cli_in_process) -> None:
    extra, expected = CASES[case]
    args = [a for a in TINY_QUANT if not (case == "group_does_not_divide" and "intermediate_size" in a)]
    result = cli_in_process([*args, *extra], storage)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {expected}"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not ray.is_initialized()  # failed before placement
    if case in CONFIG_VALUES:
        assert "MLflow run id" not in result.stdout
        return
    run = mlflow_run(storage, run_id_of(result.stdout))
    assert run.info.status == "FAILED" and expected in run.data.tags["error"]
