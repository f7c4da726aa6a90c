"""Who runs a job: one holder per job directory at a time.

Local storage takes an advisory `flock` on `<job>/.lock` (the kernel drops it when the process dies, SIGKILL
included). Object stores have no locks: a lease object `<job>/LEASE` names the holder and an expiry that a
background thread renews; a holder that died frees it when it expires (at once, seen from its own host). Two
starts within the same second can both take a lease (no conditional write): it guards against the common
mistake, not against a race."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import ConfigError

LEASE_SECONDS = float(os.environ.get("ORCHESTRATOR_LEASE_SECONDS", "120"))


def _busy(uri: str, holder: str) -> ConfigError:
    return ConfigError("job.name", f"{uri} is in use by another run of this job ({holder.strip() or 'unknown'}); "
                       "wait for it to end, or choose another job.name")


@contextmanager
def file_lock(job_dir: Path, holder: str) -> Iterator[None]:
    job_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(job_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(str(job_dir), os.pread(fd, 4096, 0).decode(errors="replace")) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _live(lease: dict) -> bool:
    """Held: not released, not expired, and not left by a dead process of this host (SIGKILL: no release)."""
    if not lease.get("token") or lease.get("released") or lease.get("expires", 0) <= time.time():
        return False
    if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int):
        try:
            os.kill(lease["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


@contextmanager
def lease(uri: str, holder: str, read: Callable[[str], str | None], write: Callable[[str, str], None],
          seconds: float = LEASE_SECONDS) -> Iterator[None]:
    """A lease object at `uri` through the backend's `read`/`write` (one small object, replaced whole)."""
    token = uuid.uuid4().hex
    try:
        current = json.loads(read(uri) or "{}")
    except json.JSONDecodeError:
        current = {}
    if _live(current):
        left = current["expires"] - time.time()
        raise _busy(uri, f"{current.get('holder', 'unknown')}; its lease ends in {left:.0f} s unless renewed")

    def put(released: bool = False) -> None:
        write(uri, json.dumps({"holder": holder, "token": token, "expires": time.time() + seconds,
                               "released": released, "host": socket.gethostname(), "pid": os.getpid()}))

    put()
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(seconds / 3):
            try:
                put()
            except Exception:  # noqa: BLE001  a missed renewal is retried; the job's own storage calls fail loudly
                continue

    thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        put(released=True)
