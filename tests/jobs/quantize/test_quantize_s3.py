"""job=quantize with job.storage=s3://... on a real S3 endpoint (moto_server) and an MLflow server whose
artifacts go to S3: block checkpoints, manifest and the export land in the bucket (marker last), the
export is downloadable by run id and reloads, and a job killed mid-way resumes from the S3 blocks to
the uninterrupted run's bytes. Calibration text and (for the resumed job) the model are read from S3."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from core import storage
from core.quant.load import load_quantized
from jobs.quantize import checkpoint
from tests.conftest import REPO, finish_cli, make_bucket, run_id_of, s3_client, s3_keys, start_cli
from tests.jobs.conftest import QUANT_ALGOS, TINY_QUANT

BUCKET = "quant-e2e"
ROOT = f"s3://{BUCKET}/runs"
GPTQ_2W = [*QUANT_ALGOS["gptq"], "quant.num_workers=2"]  # data parallel: workers push their inputs files


@pytest.fixture(scope="module")
def s3(s3_server: dict, mlflow_s3_server: str, tmp_path_factory: pytest.TempPathFactory, fp_dir: Path) -> dict:
    """Inputs uploaded by another tool (plain objects, no marker): the calibration text and the FP model."""
    make_bucket(s3_server, BUCKET)
    client = s3_client(s3_server)
    client.upload_file(str(REPO / "data" / "text" / "train.txt"), BUCKET, "data/train.txt")
    for path in fp_dir.iterdir():
        client.upload_file(str(path), BUCKET, f"models/fp/{path.name}")
    env = {**s3_server, "ORCHESTRATOR_CACHE": str(tmp_path_factory.mktemp("cache"))}
    args = [*TINY_QUANT, *GPTQ_2W, f"calib.path=s3://{BUCKET}/data/train.txt", f"tracking.uri={mlflow_s3_server}"]
    return {"env": env, "tracking": mlflow_s3_server, "args": args}


@pytest.fixture
def s3_env(s3: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3["env"].items():
        monkeypatch.setenv(key, value)


def _start(s3: dict, log: Path, args: list[str], *extra: str) -> tuple[subprocess.Popen, Path]:
    """The CLI (embedded Ray: its workers get the S3 environment from it) in the background, output in `log`."""
    return start_cli([*args, f"job.storage={ROOT}", *extra], log, s3["env"])


KILLED = "gptq-killed"  # loads the FP model from S3 (the same weights the uninterrupted one builds from its config)


@pytest.fixture(scope="module")
def runs(s3: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The killed job first and alone (the kill must land between block 1's marker and the export); then its
    rerun and the uninterrupted job side by side. Their outputs."""
    logs, tmp = tmp_path_factory.mktemp("quant-s3-logs"), f"/tmp/orch-qs3-{os.getpid()}"
    args = [*s3["args"], "model=hf", f"model.path=s3://{BUCKET}/models/fp", f"job.name={KILLED}"]
    proc, log = _start(s3, logs / "killed.log", args, f"cluster.tmp_dir={tmp}")
    with pytest.MonkeyPatch.context() as env:
        for key, value in s3["env"].items():
            env.setenv(key, value)
        deadline = time.time() + 300
        while not storage.is_published(checkpoint.block_dir(f"{ROOT}/{KILLED}/blocks", 1)):
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.time() < deadline
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its embedded Ray and the calibration actors
        proc.wait()
        _kill_by_pid_under(tmp)
        assert not storage.is_published(f"{ROOT}/{KILLED}/export"), "killed too late: the job had finished"
    resumed = _start(s3, logs / "resumed.log", args)
    uninterrupted = _start(s3, logs / "uninterrupted.log", [*s3["args"], "job.name=gptq-2w"])
    return {"resumed": finish_cli(*resumed), "uninterrupted": finish_cli(*uninterrupted)}


@pytest.fixture(scope="module")
def uninterrupted(runs: dict[str, str]) -> str:
    return run_id_of(runs["uninterrupted"])


def _kill_by_pid_under(tmp: str) -> None:
    """Ray's gcs_server/raylet leave the process group: end this run's (its unique temp dir) by pid."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        if any(tmp in part for part in p.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                p.kill()


def _export_files(uri: str) -> dict[str, bytes]:
    local = storage.local_path(uri, field="export")
    return {p.name: p.read_bytes() for p in sorted(local.iterdir()) if p.name not in ("quant_info.json",
                                                                                     storage.MARKER)}


def test_blocks_and_export_land_in_the_bucket(uninterrupted: str, s3: dict, s3_env: None) -> None:
    keys = s3_keys(s3["env"], BUCKET, "runs/gptq-2w/")
    assert "runs/gptq-2w/blocks/manifest.json" in keys
    for index in range(4):
        assert f"runs/gptq-2w/blocks/block_{index:03d}/COMPLETE" in keys
    for name in ("COMPLETE", "model.safetensors", "config.json", "quant_info.json"):
        assert f"runs/gptq-2w/export/{name}" in keys
    assert not [k for k in keys if "/.tmp-" in k], "a temporary prefix was left behind"
    assert checkpoint.finished_blocks(f"{ROOT}/gptq-2w/blocks") == 4
    model = load_quantized(storage.local_path(f"{ROOT}/gptq-2w/export", field="model.path"))
    assert model.config.num_hidden_layers == 4


def test_export_is_in_mlflows_s3_store_and_downloadable_by_run_id(uninterrupted: str, s3: dict, s3_env: None,
                                                                   tmp_path: Path) -> None:
    import mlflow

    assert [k for k in s3_keys(s3["env"], "mlflow-artifacts") if k.endswith("/artifacts/export/quant_info.json")]
    got = Path(mlflow.artifacts.download_artifacts(run_id=uninterrupted, artifact_path="export",
                                                   tracking_uri=s3["tracking"], dst_path=str(tmp_path)))
    published = _export_files(f"{ROOT}/gptq-2w/export")
    assert (got / "model.safetensors").read_bytes() == published["model.safetensors"]
    assert load_quantized(got).config.num_hidden_layers == 4


def test_killed_job_resumes_from_the_s3_blocks(runs: dict[str, str], s3: dict, s3_env: None) -> None:
    output = runs["resumed"]
    assert "resumed_at: 2" in output or "resumed_at: 3" in output, output[-2000:]
    resumed, reference = _export_files(f"{ROOT}/{KILLED}/export"), _export_files(f"{ROOT}/gptq-2w/export")
    assert resumed.keys() == reference.keys()
    # config/tokenizer_config name their source (model.path): the weights must be the same bytes
    assert resumed["model.safetensors"] == reference["model.safetensors"]
