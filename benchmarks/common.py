"""What every benchmark shares: running a logged subprocess, the common flags, recording a result table."""

from __future__ import annotations

import argparse
import datetime
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_clock = {"end": None}  # monotonic time by which every run must have ended (--deadline); set by parse_args


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments, starting the --deadline clock: a benchmark bounded this way ends inside a device call's
    limit with the rows it has, instead of being killed from outside with none."""
    args = parser.parse_args()
    _clock["end"] = None if args.deadline is None else time.monotonic() + args.deadline
    return args


def _time_left(timeout: float | None) -> float | None:
    if _clock["end"] is None:
        return timeout
    left = max(1.0, _clock["end"] - time.monotonic())
    return left if timeout is None else min(timeout, left)


def run_logged(cmd: list[str], log: Path, timeout: float | None = None, env: dict[str, str] | None = None) -> str:
    """stdout + stderr of `cmd` (run from the repo), written to `log` as they come (a benchmark killed from outside
    still leaves every run's log so far) and returned; a failure is printed, not raised: one failed
    configuration leaves the others' rows. Past `timeout` seconds its whole process group is killed (Ray
    daemons included) and the output ends with a TIMED OUT line; --deadline bounds `timeout` too. `env`: variables
    set for `cmd` on top of this process's."""
    timeout = _time_left(timeout)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_ALLOW_FILE_STORE": "true", **(env or {})}
    alone = timeout is not None  # its own process group, to kill it whole
    with open(log, "w") as sink, subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, text=True,
                                                  env=env, start_new_session=alone) as proc:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            sink.write(f"\nTIMED OUT after {timeout:.0f} s\n")
        except BaseException:  # interrupted (SIGTERM/SIGINT handlers): do not leave it running
            os.killpg(proc.pid, signal.SIGKILL) if alone else proc.kill()
            raise
    out = log.read_text()
    if proc.returncode != 0:
        print(f"FAILED ({proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}", flush=True)
    return out


def bytecode_cache(path: str) -> None:
    """Python bytecode for this process and every process it starts (runs, their Ray heads and workers) kept under
    `path`, as in an environment pip installed (the project's image included: pip compiles at install). The lent
    GPU image ships torch and transformers without .pyc files and sets PYTHONDONTWRITEBYTECODE=1, so there every
    new process compiles their Python again (10-14 s for torch + transformers' Llama). '' leaves it as it is."""
    if not path:
        return
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = path
    sys.dont_write_bytecode, sys.pycache_prefix = False, path


def add_common_args(parser: argparse.ArgumentParser, work: str, deadline: float | None = None) -> None:
    parser.add_argument("--work", default=work)
    parser.add_argument("--deadline", type=float, default=deadline,
                        help="seconds for the whole benchmark: each run gets what is left, then is killed")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--extra", default="", help="extra overrides for ours, space-separated")
    parser.add_argument("--commit", default=None, help="when the tree has no .git (device copies)")


def record(results: str, title: str, table: str, commit: str | None) -> None:
    """Print the table under a heading with device, date and commit, and append it to `results`."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    commit = commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                      text=True).stdout
    text = f"\n### {title}: {device}, {datetime.date.today()}, commit {commit.strip() or 'unknown'}\n\n{table}\n"
    print(text, flush=True)
    with open(results, "a") as fh:
        fh.write(text)


@contextmanager
def ray_head(work: Path) -> Iterator[str]:
    """A Ray head started with `ray start --head` (as a GPU node runs one before `ray job submit`), killed on exit;
    yields its address for `cluster.address=`. Runs attached to it leave out Ray's start, as users' jobs do."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    temp = Path(f"/tmp/rh-{port}")  # short: Ray's unix socket paths must stay under 108 characters
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
           "--node-ip-address=127.0.0.1", "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"]
    # without it a driver resolves the head's address to the host's first interface and waits for a GCS there;
    # the head and its drivers (run_logged's children, inheriting this environment until exit) share one token
    client = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
              "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    saved = {key: os.environ.get(key) for key in client}
    os.environ.update(client)
    log = work / "ray-head.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray head did not come up: see {log}")
            time.sleep(0.3)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        subprocess.run(["pkill", "-9", "-f", str(temp)], check=False)  # gcs_server/raylet leave its process group
        shutil.rmtree(temp, ignore_errors=True)
        for key, value in saved.items():  # as before: later embedded runs must not look for this head's token
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
