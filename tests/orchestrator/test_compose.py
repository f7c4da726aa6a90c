"""Config errors fail in about a second, before Ray starts, with one line naming the field."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_steps=abc",
         "config error: trainer.max_steps: Value 'abc' of type 'str' could not be converted to Integer"),
        ("trainer.no_such_key=1",
         "config error: trainer.no_such_key: unknown key 'no_such_key' (not a field of TrainerConfig)"),
        ("model=nope", "config error: model: unknown option 'nope' (available: hf, llava15_7b, llava_next_small, "
                       "llava_tiny, qwen3_1p7b, qwen3_tiny)"),
        ("model.name=nope", "config error: model.name: unknown model 'nope' (known: hf, llava15_7b, llava_next_small, "
                            "llava_tiny, qwen3_1p7b, qwen3_tiny)"),
        ("job.kind=nope", "config error: job.kind: unknown job kind 'nope'"),
        ("data.datasets.0.sample_ratio=lots", "config error: data.datasets[0].sample_ratio: Value 'lots'"),
        ("--bogus", "unrecognized arguments: --bogus (try --help)"),  # a flag: the same boundary (test_flags.py)
    ],
)
def test_bad_config_is_one_line_and_exit_2(override: str, message: str, tmp_path) -> None:
    result = run_cli([override], tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {message}"), lines[0]
    assert not (tmp_path / "mlflow.db").exists()  # failed before any run was opened


def test_cfg_job_prints_spec_and_runs_nothing(tmp_path) -> None:
    result = run_cli(["trainer.max_steps=7", "--cfg", "job"], tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "max_steps: 7" in result.stdout and "kind: sft" in result.stdout
    assert not any(tmp_path.iterdir())  # nothing written
