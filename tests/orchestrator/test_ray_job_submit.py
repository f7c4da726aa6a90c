"""The orchestrator as a Ray Jobs entrypoint on an existing cluster (`ray start --head` +
`ray job submit`): it attaches instead of starting its own; status reflects the outcome."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import FAST_SFT, REPO, mlflow_run

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head(ray_head):
    """The session's head node (tests/conftest.py: `ray start --head`, token auth): its job API's address."""
    return ray_head.dashboard, {**os.environ, **ray_head.env}


@pytest.fixture(scope="module", autouse=True)
def bad_override(head, tmp_path_factory: pytest.TempPathFactory):
    """Submitted as the module begins, so it runs beside the SFT job (it fails at compose: seconds of work)."""
    storage = tmp_path_factory.mktemp("submit-bad")
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(_submit, head, ["trainer.max_steps=abc", f"job.storage={storage}"])


ENV_SECRET = "plantedEnvSecret-7f3a9c"  # in the job's environment
CONFIG_SECRET = "hf_PlantedConfigSecret0123456789abcd"  # in a config value


NOT_UP = ("No available agent", "Failed to connect to Ray at address")  # refused before any job exists


def _submit(head, args: list[str], job_env: dict | None = None) -> subprocess.CompletedProcess:
    """`ray job submit`, retried while the head's job API is still coming up (instead of a probe job)."""
    address, env = head
    runtime_env = ["--runtime-env-json", json.dumps({"env_vars": job_env})] if job_env else []
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO), *runtime_env, "--",
           "python", "-m", "orchestrator", *args]
    deadline = time.time() + 180
    while True:
        result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        if result.returncode == 0 or not any(m in result.stdout + result.stderr for m in NOT_UP):
            return result
        assert time.time() < deadline, f"the head's job API did not come up: {result.stderr[-2000:]}"
        time.sleep(1)


def _job_id(output: str) -> str:
    return next(w.strip("'") for w in output.split() if w.strip("'").startswith("raysubmit_"))


def _status_and_logs(head, job_id: str) -> tuple[str, str]:
    address, env = head
    status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", address, job_id], env=env,
                            capture_output=True, text=True)
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", address, job_id], env=env,
                          capture_output=True, text=True)
    return status.stdout + status.stderr, logs.stdout


def _everything_mlflow_holds(storage: Path, run_id: str, into: Path) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    run = client.get_run(run_id)
    local = Path(client.download_artifacts(run_id, "", str(into)))
    texts = [str(run.data.params), str(run.data.tags), str(run.data.metrics)]
    texts += [f.read_text(errors="replace") for f in local.rglob("*") if f.is_file()]
    return "\n".join(texts)


def test_submitted_sft_job_succeeds_is_tracked_and_leaks_no_secret(head, tmp_path: Path) -> None:
    storage = tmp_path / "runs"
    result = _submit(head, ["job=sft", *FAST_SFT, "trainer.max_steps=2", f"job.storage={storage}", "job.name=submitted",
                            # config values that resolve to secrets (typing a secret on the command line would
                            # put it in Ray's own "Running entrypoint ..." log line, outside our control)
                            "+tracking.tags.hf_token=${oc.env:PLANTED_VALUE}",
                            "job.parent_run=${oc.env:AWS_SECRET_ACCESS_KEY}"],
                     job_env={"AWS_SECRET_ACCESS_KEY": ENV_SECRET, "MLFLOW_TRACKING_TOKEN": ENV_SECRET,
                              "PLANTED_VALUE": CONFIG_SECRET})
    status, logs = _status_and_logs(head, _job_id(result.stdout + result.stderr))
    assert "succeeded" in status.lower(), result.stdout[-3000:] + result.stderr[-3000:]
    assert "Started a local Ray instance" not in logs  # attached to the cluster, started nothing
    run_id = next(line.split()[3] for line in logs.splitlines() if line.startswith("MLflow run id:"))
    run = mlflow_run(storage, run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.max_steps"] == "2"
    assert run.data.tags["ray.job_id"].startswith("raysubmit_")
    mlflow_text = _everything_mlflow_holds(storage, run_id, tmp_path / "artifacts")
    assert "export/model.safetensors" in str(list((tmp_path / "artifacts").rglob("*.safetensors")))
    for secret in (ENV_SECRET, CONFIG_SECRET):
        assert secret not in mlflow_text, f"{secret} reached MLflow"
        assert secret not in logs and secret not in result.stdout + result.stderr, f"{secret} reached the logs"
    assert "***" in mlflow_text  # redacted, not dropped: the keys are still there


def test_bad_override_fails_the_job_with_the_one_line_error(head, bad_override: Future) -> None:
    result = bad_override.result()
    assert result.returncode != 0
    status, logs = _status_and_logs(head, _job_id(result.stdout + result.stderr))
    assert "failed" in status.lower() and "succeeded" not in status.lower()
    assert "error: config error: trainer.max_steps: Value 'abc' of type 'str' could not be converted to Integer" in logs
