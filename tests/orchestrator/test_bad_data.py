"""Bad data: one line naming file:line, exit 2, the MLflow run FAILED, Ray never started."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import mlflow_run, run_id_of


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-data") / "runs"  # one MLflow store for the module: fewer migrations


GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}

CASES = {
    "malformed_json": ('{"messages": [', "line 2: malformed JSON"),
    "no_messages": ('{"conversation": []}', "line 2: sample has no 'messages'"),
    "no_role": ('{"messages": [{"content": "x"}]}', "line 2: messages[0] has no 'role'"),
    "no_content": ('{"messages": [{"role": "user"}]}', "line 2: messages[0] has no 'content'"),
    "unknown_role": ('{"messages": [{"role": "robot", "content": "x"}]}',
                     "line 2: messages[0] has unknown role 'robot'"),
    "no_assistant": ('{"messages": [{"role": "user", "content": "x"}]}',
                     "line 2: sample has no assistant (loss) token"),
    "bad_loss_flag": ('{"messages": [{"role": "assistant", "content": "x", "loss": "yes"}]}',
                      "line 2: messages[0].loss must be true or false"),
}


def _dataset(tmp_path: Path, second_line: str | None) -> Path:
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(GOOD)] + ([second_line] if second_line is not None else [])
    path.write_text("\n".join(lines) + "\n")
    return path


def _assert_failed(result, storage: Path, expected: str) -> None:
    import ray

    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and expected in error_lines[0], result.stderr
    assert result.stderr.strip().splitlines()[-1] == error_lines[0] and "Traceback" not in result.stderr
    assert not ray.is_initialized()  # failed before placement
    run = mlflow_run(storage, run_id_of(result.stdout))
    assert run.info.status == "FAILED"
    assert expected in run.data.tags["error"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_record(case: str, tmp_path: Path, storage: Path, cli_in_process) -> None:
    line, expected = CASES[case]
    path = _dataset(tmp_path, line)
    result = cli_in_process([f"data.datasets=[{{path: {path}}}]"], storage, timeout=120)
    _assert_failed(result, storage, f"data error: {path}:{expected.split(': ', 1)[0].split()[-1]}: "
                   + expected.split(": ", 1)[1])


def test_empty_dataset(tmp_path: Path, storage: Path, cli_in_process) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    result = cli_in_process([f"data.datasets=[{{path: {path}}}]"], storage, timeout=120)
    _assert_failed(result, storage, f"data error: {path}: dataset is empty")


def test_missing_path(tmp_path: Path, storage: Path, cli_in_process) -> None:
    result = cli_in_process([f"data.datasets=[{{path: {tmp_path}/nope.jsonl}}]"], storage, timeout=120)
    _assert_failed(result, storage, f"config error: data.datasets[0].path: {tmp_path}/nope.jsonl: no such file")


def test_missing_model_path(storage: Path, cli_in_process) -> None:
    result = cli_in_process(["model=hf"], storage, timeout=120)
    _assert_failed(result, storage, "config error: model.path: required for model=hf")


def test_too_long_sample_with_truncation_error(tmp_path: Path, storage: Path, cli_in_process) -> None:
    path = _dataset(tmp_path, None)
    result = cli_in_process([f"data.datasets=[{{path: {path}}}]", "data.max_length=8", "data.pack_max_length=8",
                      "data.truncation=error"], storage, timeout=120)
    _assert_failed(result, storage, f"data error: {path}:1: sample has")
