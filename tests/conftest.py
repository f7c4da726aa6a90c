"""Shared helpers: run the real CLI in a subprocess, read the real MLflow store."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
# One `ninja` for every process of the session (drivers, Ray workers, the head): DeepSpeed JIT-builds its CPU comm
# op into TORCH_EXTENSIONS_DIR with whichever is on PATH, and the venv's (1.13, a deepspeed dependency) and
# /usr/bin's (1.11) hash commands differently, so each switch between them rebuilt the op (50-110 s here).
BIN = str(Path(sys.executable).parent)
if os.environ["PATH"].split(os.pathsep)[0] != BIN:
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"

# Small, fast SFT settings for CPU tests (2 workers, ZeRO-3 over gloo, every param partitioned).
FAST_SFT = [
    "data.max_length=256", "data.pack_max_length=256", "trainer.micro_batch_size=1",
    "trainer.num_workers=2", "trainer.zero.param_persistence_threshold=0", "cluster.include_dashboard=false",
]  # the dashboard costs ~3 s per run; the SFT reference run keeps it on, as `make run` does


# The end-to-end lane (`-m e2e`; `make test-fast` runs the rest): every test that uses one of these fixtures (a real
# Ray head, S3 server, CLI jobs or a trained model), and those marked `pytest.mark.e2e` in their module.
E2E_FIXTURES = {"ray_head", "s3_server", "s3_bucket", "mlflow_s3_server", "quantize_run", "llava_shapes", "two_cpus"}


_EXIT = {"status": 1}  # pytest's exit status, once the session has one


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end to end (real Ray jobs, DeepSpeed engines, servers); "
                                       "make test-fast leaves these out")
    import atexit

    atexit.register(_leave)  # registered first, so it runs after every other exit handler


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT["status"] = int(exitstatus)


def _leave() -> None:
    """Every exit handler has run and pytest has reported: leave without the interpreter's teardown of the torch,
    transformers, DeepSpeed and Ray modules the session imported (5-7 s here, for nothing), as the CLI does
    (orchestrator/__main__.py)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT["status"])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


def run_cli(args: list[str], storage: Path, timeout: int = 600, env: dict | None = None,
            ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "orchestrator", *args, f"job.storage={storage}"]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)


def start_cli(args: list[str], log: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    """The CLI in the background, its output in `log`, in a session of its own (os.killpg ends the driver with its
    embedded Ray and actors)."""
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
    return proc, log


def finish_cli(proc: subprocess.Popen, log: Path, timeout: int = 600) -> str:
    """The output of a start_cli run, once it has succeeded."""
    proc.wait(timeout=timeout)
    output = log.read_text()
    assert proc.returncode == 0, output[-4000:]
    return output


def run_id_of(output: str) -> str:
    match = re.search(r"MLflow run id: (\w+)", output)
    assert match, f"no MLflow run id printed:\n{output[-3000:]}"
    return match.group(1)


def mlflow_run(storage: Path, run_id: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}").get_run(run_id)


@pytest.fixture
def cli_in_process(capsys: pytest.CaptureFixture):
    """The real CLI entry point in this process: for inputs that fail before Ray starts (no interpreter
    start-up per case; the subprocess path is covered by test_compose.py and the end-to-end tests)."""
    from orchestrator.cli import main

    def run(args: list[str], storage: Path, **_: object) -> SimpleNamespace:
        code = main([*args, f"job.storage={storage}"])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    import time
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            assert proc.poll() is None and time.time() < deadline, f"{what} did not come up"
            time.sleep(0.3)


def kill_under(path: str) -> None:
    """Kill by pid every process whose command line names `path` (a run's unique Ray temp dir): Ray's
    gcs_server/raylet leave the process group of the command that started them."""
    import contextlib

    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid != os.getpid() and any(path in part for part in proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                proc.kill()


@pytest.fixture(scope="session")
def ray_head():
    """One real head node for the session (`ray start --head`: token auth, dashboard and job API on 127.0.0.1,
    4 logical CPUs on the 2 cores: two 2-worker jobs fit side by side). Subprocess jobs attach to it (`.args`:
    cluster.address; `.env` for run_cli) instead of starting an embedded cluster each: ray.init + shutdown cost
    15-25 s per job on 2 shared cores, attaching 0.2 s.
    test_ray_job_submit.py submits to its dashboard. The embedded path stays covered by the SFT reference
    run (dashboard on, as `make run`), the runs that are killed, and the S3 runs (their workers need the
    job's AWS environment, which an embedded cluster inherits from the driver)."""
    import secrets
    import shutil
    import signal
    import tempfile
    import time

    client = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
              "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # without it the driver waits for a raylet on eth0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_"))}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": client["RAY_AUTH_TOKEN"], "GLOO_SOCKET_IFNAME": "lo"}
    gcs, dashboard = free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # short: Ray's unix socket paths must stay < 108 chars
    cmd = [str(Path(BIN) / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=4",
           "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
           f"--temp-dir={temp}", "--disable-usage-stats",
           # fixed by default (52365, 10001): taken when another Ray runs on this machine (no job agent then)
           f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}"]
    log = Path(f"{temp}.log")
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while "Ray runtime started" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, f"ray head did not come up: see {log}"
            time.sleep(0.3)
        yield SimpleNamespace(address=f"127.0.0.1:{gcs}", dashboard=f"http://127.0.0.1:{dashboard}", env=client,
                              args=[f"cluster.address=127.0.0.1:{gcs}"])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kill_under(temp)
        shutil.rmtree(temp, ignore_errors=True)
        log.unlink(missing_ok=True)


S3_SECRET = "plantedS3Secret-5d1e0b7c2a"  # the secret key every S3 test runs with: must leak nowhere


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint (moto in server mode, in memory) on 127.0.0.1 for the session; yields the
    environment that points boto3 and MLflow at it (credentials are dummies: moto accepts any)."""
    import signal

    port = free_port()
    cmd = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, proc, "moto_server")
        yield {"AWS_ENDPOINT_URL": url, "MLFLOW_S3_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "AKIATESTPLANTED0KEY1",
               "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_REGION": "us-east-1"}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def s3_bucket(s3_server: dict, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket for one test, with this process's environment (and download cache) pointed at it."""
    import boto3

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ORCHESTRATOR_CACHE", str(tmp_path / "cache"))
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def s3_client(env: dict[str, str]):
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def s3_keys(env: dict[str, str], bucket: str, prefix: str = "") -> list[str]:
    pages = s3_client(env).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def make_bucket(env: dict[str, str], name: str) -> str:
    s3_client(env).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def mlflow_s3_server(s3_server: dict, tmp_path_factory: pytest.TempPathFactory):
    """`mlflow server` on 127.0.0.1: sqlite backend, artifacts proxied to s3://mlflow-artifacts/mlflow on the
    moto endpoint (what `make mlflow-server MLFLOW_ARTIFACTS=s3://...` runs). Yields its URL."""
    import signal

    make_bucket(s3_server, "mlflow-artifacts")
    db, port = tmp_path_factory.mktemp("mlflow-server") / "mlflow.db", free_port()
    env = {**os.environ, **s3_server, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{db}",
           "--artifacts-destination", "s3://mlflow-artifacts/mlflow"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, "mlflow server")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def session_processes(sid: int) -> list[int]:
    """Live processes of session `sid` (a CLI started with start_new_session=True: its embedded Ray's gcs_server,
    raylet, agents and workers all stay in it, even when retitled "ray::...")."""
    import psutil

    alive = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getsid(proc.pid) == sid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return alive


def signal_and_expect(proc: subprocess.Popen, log: Path, signum: int, timeout: float = 120) -> str:
    """Send `signum` to the CLI's driver (what `timeout`, Kubernetes or a terminal's Ctrl-C reach), wait for it:
    exit 128 + signum, one `error: interrupted by SIG...` line, and no process of its session left 10 s later."""
    import signal
    import time

    os.kill(proc.pid, signum)
    proc.wait(timeout=timeout)
    output = log.read_text()
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, output[-4000:]
    assert output.strip().splitlines()[-1].endswith(f"error: interrupted by {name}") or \
        f"error: interrupted by {name}\n" in output, output[-3000:]
    deadline = time.time() + 10
    while session_processes(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert not session_processes(proc.pid), f"processes of the job left behind after {name}"
    return output
