"""python -m orchestrator.submit against the session's real head node (token auth): it stops a job its prefix left
running, passes the driver's exit code on, and stops its own job when it is terminated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO

SLEEPER = [sys.executable, "-c", "import time; print('job started', flush=True); time.sleep(600)"]


@pytest.fixture
def head(ray_head):
    """The head's job API, and a client of it that sends the token as a header (RAY_AUTH_* in this process's
    environment would switch Ray's token auth on for every later cluster the test process starts)."""
    from ray.job_submission import JobSubmissionClient

    token = {"Authorization": f"Bearer {ray_head.env['RAY_AUTH_TOKEN']}"}
    return ray_head, JobSubmissionClient(ray_head.dashboard, headers=token)


def _submitter(head, prefix: str, entrypoint: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "orchestrator.submit", "--address", head.dashboard, "--prefix", prefix,
           "--deadline", "300", "--stop-wait", "60", "--", *entrypoint]
    with log.open("w") as out:
        return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **head.env})


def _wait(what: str, check, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not check():
        assert time.time() < deadline, what
        time.sleep(0.5)


def test_submitter_owns_its_job(head, tmp_path: Path) -> None:
    ray_head, client = head
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    leftover = client.submit_job(entrypoint=" ".join(SLEEPER[:2]) + ' "import time; time.sleep(600)"',
                                 submission_id=f"{prefix}-leftover")
    _wait("the leftover job did not start", lambda: str(client.get_job_status(leftover)) == "RUNNING")

    log = tmp_path / "submit.log"
    proc = _submitter(ray_head, prefix, SLEEPER, log)
    _wait("the submitted job did not start", lambda: "job started" in log.read_text() or proc.poll() is not None)
    assert str(client.get_job_status(leftover)) == "STOPPED"  # stopped before the new one was submitted
    own = next(j.submission_id for j in client.list_jobs()
               if (j.submission_id or "").startswith(prefix) and j.submission_id != leftover)
    assert str(client.get_job_status(own)) == "RUNNING"
    proc.send_signal(signal.SIGTERM)  # Kubernetes stopping the pod
    assert proc.wait(timeout=120) == 143, log.read_text()
    assert str(client.get_job_status(own)) == "STOPPED"
    assert f"submit: SIGTERM: stopping {own}" in log.read_text()

    failing = _submitter(ray_head, prefix, [sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path / "fail.log")
    assert failing.wait(timeout=180) == 3, (tmp_path / "fail.log").read_text()  # the driver's own exit code


def test_an_unreachable_job_api_is_one_line_exit_2(capsys) -> None:
    from orchestrator.submit import main

    assert main(["--address", "http://127.0.0.1:9", "--prefix", "x", "--deadline", "10", "--", "true"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: submit: ConnectionError: Failed to connect to Ray at address: http://127.0.0.1:9."]
    assert main(["--address", "http://127.0.0.1:9", "--prefix", "x", "--deadline", "10"]) == 2
    assert "give the job's entrypoint after --" in capsys.readouterr().err
