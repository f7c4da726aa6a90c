"""No wait without a deadline, with the defaults users get: a silent S3 endpoint (accepts, never answers) fails
within 60 s, an unreachable MLflow server within 30 s; one error line each, the password nowhere."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from core.storage import s3
from tests.conftest import free_port

pytestmark = pytest.mark.e2e  # they wait out real timeouts (about 40 s in all)


@pytest.fixture
def silent_endpoint():
    """A TCP listener that accepts every connection and never sends a byte."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def _error_line(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return errors[0]


def test_a_silent_s3_endpoint_fails_within_a_minute(silent_endpoint: str, cli_in_process,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for key in s3.DEADLINES:
        monkeypatch.delenv(key, raising=False)  # the defaults
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", silent_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASILENTTESTKEY001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "silent-secret-key-value")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    began = time.time()
    result = cli_in_process(["job=inspect", "job.name=silent"], "s3://bucket/runs")
    took = time.time() - began
    assert "storage error: the S3 endpoint did not answer in time" in _error_line(result)
    assert took < 60, took


def test_an_unreachable_tracking_server_fails_within_30_s_without_its_password(cli_in_process, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)
    from core import tracking

    for key, value in tracking.HTTP_DEFAULTS.items():  # what every process gets when the user set nothing
        monkeypatch.setenv(key, value)
    port = free_port()
    began = time.time()
    result = cli_in_process(["job=inspect", f"tracking.uri=http://alice:Pa55w0rdZ@127.0.0.1:{port}"],
                            tmp_path / "runs")
    took = time.time() - began
    line = _error_line(result)
    assert line == f"error: tracking error: cannot reach http://***@127.0.0.1:{port} (Connection refused)"
    assert "Pa55w0rdZ" not in result.stdout + result.stderr
    assert "does not answer" in result.stdout  # said at once, before the retries
    assert took < 30, took
