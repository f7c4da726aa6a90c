"""SFT end to end on CPU: real embedded Ray, 2 DeepSpeed ZeRO-3 workers over gloo, real MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST_SFT, REPO, mlflow_run, run_cli, run_id_of

STEPS = 8
ARGS = [*FAST_SFT, f"trainer.max_steps={STEPS}", "trainer.checkpoint.every_n_steps=2",
        "trainer.checkpoint.keep_last=10"]
LOSS_TOLERANCE = 1e-5  # same seeds, same data order, same CPU kernels: resumed losses match


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sft") / "runs"


@pytest.fixture(scope="module")
def reference(storage: Path) -> dict:
    result = run_cli([*ARGS, "job.name=reference", "cluster.include_dashboard=true"], storage)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((storage / "reference" / "summary.json").read_text())
    return {"run_id": run_id_of(result.stdout), "stdout": result.stdout,
            "losses": {e["step"]: e["loss"] for e in summary["losses"]}}


def _start(storage: Path, name: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "orchestrator", *ARGS, f"job.name={name}", f"job.storage={storage}",
           f"cluster.tmp_dir=/tmp/orch-{name}-{os.getpid()}"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"run ended before {path} appeared:\n{proc.stdout.read()[-4000:]}"
        assert time.time() < deadline, f"timed out waiting for {path}"
        time.sleep(0.5)


def _assert_losses_match(losses: dict, reference: dict) -> None:
    assert losses, "no steps ran"
    for step, loss in losses.items():
        assert abs(loss - reference["losses"][step]) < LOSS_TOLERANCE, (step, loss, reference["losses"][step])


def test_loss_falls_and_run_is_tracked(reference: dict, storage: Path) -> None:
    losses = reference["losses"]
    assert losses[STEPS] < losses[1] - 1.0, losses
    assert f"step {STEPS}/{STEPS} loss=" in reference["stdout"] and "tgs=" in reference["stdout"]
    run = mlflow_run(storage, reference["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.max_steps"] == str(STEPS)
    assert int(run.data.params["model.total_params"]) > 9_000_000  # full count, not a ZeRO-3 shard
    assert run.data.tags["job.kind"] == "sft"
    for metric in ("loss", "lr", "grad_norm", "tgs", "tgs_e2e", "step_time", "data_time", "tokens", "mem_rss_gib"):
        assert metric in run.data.metrics, metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    assert len(client.get_metric_history(run.info.run_id, "loss")) == STEPS
    artifacts = {a.path for d in ("spec", "model", "export") for a in client.list_artifacts(run.info.run_id, d)}
    for name in ("spec/resolved.yaml", "model/tree.txt", "model/parameters.json", "export/model.safetensors",
                 "export/config.json", "export/tokenizer.json"):
        assert name in artifacts, (name, artifacts)


def test_export_reloads_with_the_trained_weights(reference: dict, storage: Path) -> None:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job_dir = storage / "reference"
    exported = AutoModelForCausalLM.from_pretrained(job_dir / "export", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(job_dir / "export")
    trained = AutoModelForCausalLM.from_config(exported.config).eval()
    state = get_fp32_state_dict_from_zero_checkpoint(str(job_dir / "checkpoints"), tag=f"step_{STEPS:06d}")
    trained.load_state_dict(state, strict=False)
    trained.tie_weights()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], return_tensors="pt",
                                        add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        assert torch.equal(exported(ids).logits, trained(ids).logits)


def test_killed_run_resumes_with_the_same_losses(reference: dict, storage: Path) -> None:
    proc = _start(storage, "killed")
    _wait_for(storage / "killed" / "checkpoints" / "step_000004" / "COMPLETE", proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its embedded Ray and its workers
    proc.wait()
    subprocess.run(["pkill", "-9", "-f", f"/tmp/orch-killed-{os.getpid()}"], check=False)
    result = run_cli([*ARGS, "job.name=killed"], storage)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((storage / "killed" / "summary.json").read_text())
    assert summary["resumed_at"] >= 4
    _assert_losses_match({e["step"]: e["loss"] for e in summary["losses"]}, reference)


def test_sigkilled_worker_restarts_from_checkpoint(reference: dict, storage: Path) -> None:
    proc = _start(storage, "worker-kill")
    job_dir = storage / "worker-kill"
    _wait_for(job_dir / "checkpoints" / "step_000002" / "COMPLETE", proc)
    os.kill(int((job_dir / "workers" / "rank1.pid").read_text()), signal.SIGKILL)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-4000:]
    summary = json.loads((job_dir / "summary.json").read_text())
    assert summary["final_step"] == STEPS and summary["resumed_at"] >= 2, summary
    _assert_losses_match({e["step"]: e["loss"] for e in summary["losses"]}, reference)
