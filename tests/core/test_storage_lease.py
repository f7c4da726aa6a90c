"""core/storage/lease.py: one run of a job at a time; the second gets one line naming the first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.storage.lease import file_lock, lease


def test_a_second_local_holder_is_refused_with_the_first_named(tmp_path: Path) -> None:
    with file_lock(tmp_path / "job", "host a pid 1"):
        busy = r"job.name: .*/job is in use by another run of this job \(host a pid 1\)"
        with pytest.raises(ConfigError, match=busy):
            with file_lock(tmp_path / "job", "host b pid 2"):
                pass
    with file_lock(tmp_path / "job", "host b pid 2"):  # released when the first ended
        pass


def test_a_killed_holder_frees_the_local_lock(tmp_path: Path) -> None:
    code = (f"from core.storage.lease import file_lock\nimport os\n"
            f"with file_lock(__import__('pathlib').Path({str(tmp_path / 'job')!r}), 'child'):\n"
            f"    print('held', flush=True); os.kill(os.getpid(), 9)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout == "held\n" and proc.returncode == -9
    with file_lock(tmp_path / "job", "next"):
        pass


class Objects(dict):
    def read(self, uri: str) -> str | None:
        return self.get(uri)

    def write(self, uri: str, text: str) -> None:
        self[uri] = text


def test_a_live_lease_refuses_a_second_holder_and_is_released_after() -> None:
    store = Objects()
    with lease("s3://b/j/LEASE", "host a pid 1", store.read, store.write):
        assert json.loads(store["s3://b/j/LEASE"])["holder"] == "host a pid 1"
        with pytest.raises(ConfigError, match=r"in use by another run of this job \(host a pid 1; its lease ends in"):
            with lease("s3://b/j/LEASE", "host b", store.read, store.write):
                pass
    assert json.loads(store["s3://b/j/LEASE"])["released"]
    with lease("s3://b/j/LEASE", "host b", store.read, store.write):
        pass


@pytest.mark.parametrize("left", [
    {"expires": 0},  # expired: its holder stopped renewing
    {"pid": 2**22 + 12345},  # on this host, a process that no longer exists (SIGKILL: no release)
])
def test_a_lease_left_by_a_dead_holder_is_taken_over(left: dict) -> None:
    import socket

    store = Objects()
    stale = {"holder": "old", "token": "t", "expires": time.time() + 600, "released": False,
             "host": socket.gethostname(), "pid": os.getpid(), **left}
    store["s3://b/j/LEASE"] = json.dumps(stale)
    with lease("s3://b/j/LEASE", "new", store.read, store.write):
        assert json.loads(store["s3://b/j/LEASE"])["holder"] == "new"
