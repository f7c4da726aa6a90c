"""Bad files, model directories, names and environments: each one `error:` line naming the field or file(:line),
exit 2, no traceback; the MLflow run FAILED when the fault is found inside it, no run when it is found before it
opens; nothing published; no secret anywhere. In-process CLI: all fail before Ray starts."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, mlflow_run, run_id_of

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
SECRET = "sekr1t-9b2c7d4e1f"


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults") / "runs"  # one MLflow store for the module: fewer migrations


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real HF directory (1-block qwen3_tiny, safetensors, byte tokenizer with its chat template)."""
    import torch

    from core.models import MODELS, ModelConfig

    cfg = ModelConfig(name="qwen3_tiny", overrides={"num_hidden_layers": 1})
    source = MODELS.get("qwen3_tiny")
    out = tmp_path_factory.mktemp("model") / "m"
    source.build(cfg, source.hf_config(cfg), torch.float32).save_pretrained(out)
    source.tokenizer(cfg).save_pretrained(out)
    return out


@pytest.fixture
def broken(model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the model directory for one test to break."""
    import shutil

    return Path(shutil.copytree(model_dir, tmp_path / "m"))


def _one_error_line(result, expected: str, code: int = 2) -> str:
    import ray

    assert result.returncode == code, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not ray.is_initialized()
    return errors[0]


def _failed_run(result, storage: Path, expected: str) -> None:
    run = mlflow_run(storage, run_id_of(result.stdout))
    assert run.info.status == "FAILED" and expected in run.data.tags["error"], run.data.tags


def _no_complete_under(root: Path) -> None:
    assert not list(root.rglob("COMPLETE")), "an output was published"


def _dataset(tmp_path: Path, *lines: bytes) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join([json.dumps(GOOD).encode(), *lines]) + b"\n")
    return path


def _sft_data(path: Path | str) -> str:
    return f"data.datasets=[{{path: '{path}'}}]"


@pytest.mark.parametrize("case", ["non_utf8", "directory", "symlink_loop", "unreadable"])
def test_unreadable_data_files_name_the_file(case: str, tmp_path: Path, storage: Path, cli_in_process) -> None:
    if case == "non_utf8":
        path = _dataset(tmp_path, b'{"messages": "caf\xe9"}')
        expected = "data error: {path}:2: not UTF-8 text (byte 0xe9 at column 18)"
    elif case == "directory":
        path, expected = tmp_path, "data error: {path}: cannot read: Is a directory"
    elif case == "symlink_loop":
        path = tmp_path / "loop.jsonl"
        path.symlink_to(path)
        expected = "i/o error: {path}: too many levels of symbolic links"  # found while resolving the path
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads a file whatever its mode: the same OSError path as the other cases")
        path = _dataset(tmp_path)
        path.chmod(0)
        expected = "data error: {path}: cannot read: Permission denied"
    result = cli_in_process([_sft_data(path), f"job.name=data-{case}"], storage)
    expected = expected.format(path=path)
    _one_error_line(result, expected)
    _failed_run(result, storage, expected)


def test_a_dataset_emptied_by_truncation_says_why(tmp_path: Path, storage: Path, cli_in_process) -> None:
    long = {"messages": [{"role": "user", "content": "x" * 600}, {"role": "assistant", "content": "y"}]}
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps(long) + "\n")
    result = cli_in_process([_sft_data(path), "data.max_length=256", "data.truncation=drop", "job.name=emptied"],
                            storage)
    _one_error_line(result, f"data error: {path}: no usable samples: 1 dropped too long (data.max_length=256, "
                            "data.truncation=drop)")


def _break(model: Path, case: str) -> str:
    """Break the directory as `case` says; the message expected after `config error: model.path: `."""
    if case == "invalid_config_json":
        (model / "config.json").write_text('{\n  "model_type": "qwen3",\n  "hidden_size": 64,,\n}')
        return f"{model}/config.json:3: invalid JSON"
    if case == "truncated_safetensors":
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
        return f"{weights}: truncated ("
    if case == "pickle_only":
        (model / "model.safetensors").rename(model / "pytorch_model.bin")
        return f"{model}: only pickle weights (pytorch_model*.bin)"
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    return "the tokenizer has no chat template"


@pytest.mark.parametrize(("case", "kind"), [("invalid_config_json", "quantize"), ("truncated_safetensors", "evaluate"),
                                            ("pickle_only", "evaluate"), ("no_chat_template", "sft")])
def test_broken_model_directories_fail_before_ray(case: str, kind: str, broken: Path, storage: Path,
                                                  cli_in_process) -> None:
    expected = f"config error: model.path: {_break(broken, case)}"
    result = cli_in_process([f"job={kind}", "model=hf", f"model.path={broken}", f"job.name=model-{case}",
                             "data.max_length=256"], storage)
    _one_error_line(result, expected)
    _failed_run(result, storage, expected)
    _no_complete_under(storage / f"model-{case}")


@pytest.mark.parametrize("override", ["quant.format=w5g100", "trainer.max_steps=-5", "tracking.log_exports=sometimes",
                                      "job.name=../escaped", "job.name=a/b"])
def test_bad_values_are_refused_by_cfg_job_and_before_any_run(override: str, tmp_path: Path, cli_in_process) -> None:
    storage = tmp_path / "runs"
    field = override.split("=")[0]
    kind = "job=quantize" if field.startswith("quant") else "job=sft"
    for extra in (["--cfg", "job"], []):
        result = cli_in_process([kind, override, *extra], storage)
        _one_error_line(result, f"config error: {field}: ")
        assert "MLflow run id" not in result.stdout and result.stdout.strip() == ""
    assert not tmp_path.joinpath("escaped").exists() and not storage.exists()  # nothing written, inside or out


def test_a_second_run_of_a_running_job_is_refused(tmp_path: Path, cli_in_process) -> None:
    from core.storage.lease import file_lock

    storage = tmp_path / "runs"
    with file_lock(storage / "busy", "host h pid 4242 since 10:00"):
        result = cli_in_process(["job=inspect", "job.name=busy"], storage)
    _one_error_line(result, f"config error: job.name: {storage}/busy is in use by another run of this job "
                            "(host h pid 4242 since 10:00)")
    assert "MLflow run id" not in result.stdout


def test_a_run_left_running_by_a_killed_process_is_closed_and_linked(tmp_path: Path, cli_in_process) -> None:
    """What SIGKILL leaves: the job's run.json names a run still RUNNING. The next run of the job (holding the lock,
    so that process is gone) ends it KILLED with a note and is tagged resumed_from it."""
    from mlflow.tracking import MlflowClient

    storage = tmp_path / "runs"
    assert cli_in_process(["job=inspect", "job.name=insp"], storage).returncode == 0  # creates the store
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    orphan = client.create_run(client.get_experiment_by_name("orchestrator").experiment_id).info.run_id
    (storage / "insp" / "run.json").write_text(json.dumps({"run_id": orphan}))
    result = cli_in_process(["job=inspect", "job.name=insp"], storage)
    assert result.returncode == 0, result.stderr[-2000:]
    old, new = client.get_run(orphan), client.get_run(run_id_of(result.stdout))
    assert old.info.status == "KILLED" and "stopped without ending it" in old.data.tags["error"]
    assert new.info.status == "FINISHED" and new.data.tags["resumed_from_run"] == orphan
    assert json.loads((storage / "insp" / "run.json").read_text())["run_id"] == new.info.run_id


def _secret_nowhere(result, *roots: Path) -> None:
    assert SECRET not in result.stdout + result.stderr
    for root in roots:
        for path in [p for p in root.rglob("*") if p.is_file()] if root.exists() else []:
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_secret_in_a_path_is_redacted_everywhere(tmp_path: Path, cli_in_process,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_API_TOKEN", SECRET)
    storage = tmp_path / "runs"
    result = cli_in_process(["data.datasets=[{path: '/nonexistent/${oc.env:MY_API_TOKEN}/x.jsonl'}]",
                             "job.name=secret"], storage)
    _one_error_line(result, "config error: data.datasets[0].path: /nonexistent/***/x.jsonl: no such file")
    _failed_run(result, storage, "/nonexistent/***/x.jsonl")
    _secret_nowhere(result, storage)


def test_s3_environment_faults_are_one_line(tmp_path: Path, cli_in_process, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAULTTESTKEY0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens: refused
    began = time.time()
    result = cli_in_process(["job=inspect", "job.name=s3"], "s3://bucket/runs")
    _one_error_line(result, "storage error: cannot connect to the S3 endpoint")
    assert time.time() - began < 30
    _secret_nowhere(result)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask for either
    result = cli_in_process(["job=inspect", "job.name=s3"], "s3://bucket/runs")
    _one_error_line(result, "storage error: no AWS credentials")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAULTTESTKEY0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.us-east-1.invalid")  # a real-looking name no DNS resolves
    result = cli_in_process(["job=inspect", "job.name=s3"], "s3://bucket/runs")
    _one_error_line(result, "storage error: cannot connect to the S3 endpoint")
    _secret_nowhere(result)


def test_a_truncated_checkpoint_marked_complete_is_named_before_ray(tmp_path: Path, cli_in_process) -> None:
    """A resume point whose optimizer shard was cut short after its save (COMPLETE present): found before any
    worker starts, naming the file."""
    import torch

    storage = tmp_path / "runs"
    step = storage / "cut" / "checkpoints" / "step_000002"
    step.mkdir(parents=True)
    shard = step / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"state": torch.zeros(1000)}, shard)
    shard.write_bytes(shard.read_bytes()[:2000])
    (step / "COMPLETE").write_text("")
    result = cli_in_process(["job.name=cut", "data.max_length=256"], storage)
    expected = (f"config error: trainer.checkpoint.resume: {step}: unreadable checkpoint ({shard.name}: File is not "
                "a zip file); remove that directory")
    _one_error_line(result, expected)
    _failed_run(result, storage, expected)
