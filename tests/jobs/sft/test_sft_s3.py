"""SFT with job.storage=s3://... on a real S3 endpoint (moto_server) and an MLflow server whose artifacts
go to S3: checkpoints and the export land in the bucket (marker last), the export is downloadable by run
id, a second job resumes from its S3 checkpoint with the uninterrupted run's losses, and the
planted AWS secret key reaches neither MLflow nor the logs nor the bucket."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from core import storage
from tests.conftest import FAST_SFT, REPO, S3_SECRET, finish_cli, make_bucket, run_id_of, s3_client, s3_keys, start_cli

BUCKET = "sft-e2e"
STEPS = 4
ARGS = [*FAST_SFT, "trainer.checkpoint.every_n_steps=2", "trainer.checkpoint.keep_last=10",
        "trainer.optim.schedule=constant"]
LOSS_TOLERANCE = 1e-5
DATA = ("arithmetic.jsonl", "facts.jsonl")  # conf/data/openai_sft.yaml's datasets, in order
S3_DATA = [f"data.datasets.{i}.path=s3://{BUCKET}/data/{name}" for i, name in enumerate(DATA)]
CHECKPOINT = f"s3://{BUCKET}/runs/full/checkpoints/step_000002"  # where `resumed` starts from


@pytest.fixture(scope="module")
def s3(s3_server: dict, mlflow_s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    make_bucket(s3_server, BUCKET)
    for name in DATA:  # the demo data, uploaded by another tool (no marker): plain objects
        s3_client(s3_server).upload_file(str(REPO / "data" / "demo" / name), BUCKET, f"data/{name}")
    env = {**s3_server, "ORCHESTRATOR_CACHE": str(tmp_path_factory.mktemp("cache"))}
    return {"env": env, "tracking": mlflow_s3_server}


def _start(s3: dict, log: Path, name: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    """The CLI in the background on the bucket, its output in `log`."""
    return start_cli([*ARGS, f"job.name={name}", f"trainer.max_steps={STEPS}", f"tracking.uri={s3['tracking']}",
                      *extra, f"job.storage=s3://{BUCKET}/runs"], log, s3["env"])


def _losses(tracking: str, run_id: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    return {m.step: m.value for m in MlflowClient(tracking).get_metric_history(run_id, "loss")}


@pytest.fixture(scope="module")
def runs(s3: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """`full` (uninterrupted) and `resumed` (a new job from full's step-2 checkpoint in the bucket, data from S3):
    resumed starts once that checkpoint is committed, beside full's last steps and export. Their outputs."""
    logs = tmp_path_factory.mktemp("sft-s3-logs")
    full = _start(s3, logs / "full.log", "full")
    marker, deadline = f"runs/full/checkpoints/step_000002/{storage.MARKER}", time.time() + 300
    while marker not in s3_keys(s3["env"], BUCKET, "runs/full/checkpoints/"):
        assert full[0].poll() is None, f"full ended before its step-2 checkpoint:\n{full[1].read_text()[-4000:]}"
        assert time.time() < deadline, "timed out waiting for full's step-2 checkpoint"
        time.sleep(0.5)
    resumed = _start(s3, logs / "resumed.log", "resumed", *S3_DATA, f"trainer.checkpoint.resume={CHECKPOINT}")
    return {"full": finish_cli(*full), "resumed": finish_cli(*resumed)}


@pytest.fixture(scope="module")
def full(runs: dict[str, str]) -> dict:
    return {"run_id": run_id_of(runs["full"]), "output": runs["full"]}


def test_checkpoints_and_export_land_in_the_bucket(full: dict, s3: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    keys = s3_keys(s3["env"], BUCKET, "runs/full/")
    for step in (2, 4):
        assert f"runs/full/checkpoints/step_{step:06d}/COMPLETE" in keys
        assert f"runs/full/checkpoints/step_{step:06d}/rng_rank1.pt" in keys  # rank 1 pushed its own files
    for name in ("COMPLETE", "model.safetensors", "config.json", "tokenizer.json"):
        assert f"runs/full/export/{name}" in keys, keys
    assert not [k for k in keys if "/.tmp-" in k], "a temporary prefix was left behind"
    assert f"export: s3://{BUCKET}/runs/full/export" in full["output"]
    for key, value in s3["env"].items():
        monkeypatch.setenv(key, value)
    local = storage.local_path(f"s3://{BUCKET}/runs/full/export", field="model.path")
    assert AutoModelForCausalLM.from_pretrained(local).config.num_hidden_layers == 3


def test_export_is_in_mlflows_s3_store_and_downloadable_by_run_id(full: dict, s3: dict, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    assert [k for k in s3_keys(s3["env"], "mlflow-artifacts") if k.endswith("/artifacts/export/model.safetensors")]
    for key, value in s3["env"].items():
        monkeypatch.setenv(key, value)
    got = Path(mlflow.artifacts.download_artifacts(run_id=full["run_id"], artifact_path="export",
                                                   tracking_uri=s3["tracking"], dst_path=str(tmp_path)))
    published = storage.local_path(f"s3://{BUCKET}/runs/full/export", field="x")
    assert (got / "model.safetensors").read_bytes() == (published / "model.safetensors").read_bytes()


def test_resume_reads_the_checkpoint_back_from_s3(runs: dict[str, str], full: dict, s3: dict) -> None:
    """A new job resumes from `full`'s step-2 checkpoint in the bucket (an explicit s3:// resume: one run
    instead of a 2-step run and its rerun; resume=auto's pick of the newest marked checkpoint on S3 is
    test_resume_point_from_s3). Data from S3 too: same tokens, so the same losses as `full` (local data)."""
    assert f"resumed from {CHECKPOINT} at step 2" in runs["resumed"]
    losses, reference = _losses(s3["tracking"], run_id_of(runs["resumed"])), _losses(s3["tracking"], full["run_id"])
    assert sorted(losses) == [3, 4]
    for step, loss in losses.items():
        assert abs(loss - reference[step]) < LOSS_TOLERANCE, (step, loss, reference[step])


def test_the_aws_secret_key_leaks_nowhere(full: dict, s3: dict, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(s3["tracking"])
    run = client.get_run(full["run_id"])
    local = Path(client.download_artifacts(full["run_id"], "", str(tmp_path)))
    files = [f for f in local.rglob("*") if f.is_file()]
    assert {"resolved.yaml", "model.safetensors"} <= {f.name for f in files}
    blobs = {"params": str(run.data.params).encode(), "tags": str(run.data.tags).encode(),
             "logs": full["output"].encode()}
    blobs |= {f"artifact {f.relative_to(local)}": f.read_bytes() for f in files}
    bucket = s3_client(s3["env"])
    blobs |= {f"s3 {k}": bucket.get_object(Bucket=BUCKET, Key=k)["Body"].read()
              for k in s3_keys(s3["env"], BUCKET, "runs/full/")}
    assert not [name for name, blob in blobs.items() if S3_SECRET.encode() in blob]


def test_resume_point_from_s3(s3_bucket: str) -> None:
    """resume=auto takes the newest step with its marker; an explicit s3:// checkpoint must have one."""
    from types import SimpleNamespace

    from core.errors import ConfigError
    from jobs.sft.driver import _resume_point

    job = f"s3://{s3_bucket}/runs/job"
    for step in (2, 4):
        final = f"{job}/checkpoints/step_{step:06d}"
        staged = storage.staging_dir(final)
        (staged / "rng_rank0.pt").write_text("x")
        storage.push(staged, final, storage.token_of(staged))
        if step == 2:  # step 4 stays uploaded but never committed, as if rank 0 died before the marker
            storage.commit(final, storage.token_of(staged))
    ctx = SimpleNamespace(job_uri=job)

    def resume(mode: str) -> str | None:
        return _resume_point(SimpleNamespace(checkpoint=SimpleNamespace(resume=mode)), ctx)

    assert resume("auto") == f"{job}/checkpoints/step_000002"
    assert resume(f"{job}/checkpoints/step_000002/") == f"{job}/checkpoints/step_000002"
    with pytest.raises(ConfigError, match="step_000004: not a complete checkpoint"):
        resume(f"{job}/checkpoints/step_000004")
    with pytest.raises(ConfigError, match="has checkpoints"):
        resume("never")
