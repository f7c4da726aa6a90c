"""SIGTERM (Kubernetes, `timeout`, `ray job stop`) and SIGINT (Ctrl-C) handled alike for every job kind.

The first signal asks the job to stop at its next safe point: code that has one runs inside `safe_points()`
and calls `check()` there (quantize: after a block; SFT: its workers see the request after a step, save a
checkpoint if the job makes them, and return). Outside such a region the signal stops the job at once. A second
signal always stops at once. Either way `Interrupted` (a KeyboardInterrupt: cleanup runs, the MLflow run ends
KILLED) reaches the CLI, which exits 128 + the signal number (130, 143).

Workers on other processes learn of the request through Ray's internal key-value store (`publish`/`seen`)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)
KV_NAMESPACE = "orchestrator.stop"


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    def __reduce__(self) -> tuple:
        return type(self), (self.signum,)


_requested: int | None = None
_depth = 0  # nesting of safe_points() regions
_on_request: list[Callable[[int], None]] = []


def _handle(signum: int, frame: object) -> None:
    global _requested
    first = _requested is None
    _requested = signum
    if not first or _depth == 0:
        raise Interrupted(signum)
    log.warning("%s: stopping at the next safe point (send it again to stop at once)", signal.Signals(signum).name)
    for callback in list(_on_request):
        threading.Thread(target=callback, args=(signum,), daemon=True).start()  # no Ray call inside a handler


def install() -> None:
    """Our handlers for SIGINT and SIGTERM (main thread only; again after ray.init, which installs its own)."""
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _handle)


def requested() -> int | None:
    return _requested


def check() -> None:
    """At a safe point: raise Interrupted if a stop was asked for."""
    if _requested is not None:
        raise Interrupted(_requested)


@contextmanager
def safe_points(on_request: Callable[[int], None] | None = None) -> Iterator[None]:
    """A region whose code calls check() at its safe points; `on_request(signum)` is called (on a thread) when a
    signal arrives inside it, e.g. to tell workers (publish)."""
    global _depth
    _depth += 1
    if on_request is not None:
        _on_request.append(on_request)
    try:
        if on_request is not None and _requested is not None:
            on_request(_requested)
        yield
    finally:
        _depth -= 1
        if on_request is not None:
            _on_request.remove(on_request)


@contextmanager
def at_once() -> Iterator[None]:
    """Inside a safe_points() region, code that a signal stops at once again, as outside any region (a job run inside
    a job: its own safe points, if it has any, still apply); a stop asked for before it raises on entry."""
    global _depth
    check()
    saved, _depth = _depth, 0
    try:
        yield
    finally:
        _depth = saved


def publish(key: str, signum: int) -> None:
    """Tell workers that the job `key` is to stop (Ray's internal KV: every node of the cluster reads it)."""
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(key, signal.Signals(signum).name, namespace=KV_NAMESPACE)


def seen(key: str) -> bool:
    """In a worker: whether the driver published a stop for `key`."""
    from ray.experimental.internal_kv import _internal_kv_get

    return _internal_kv_get(key, namespace=KV_NAMESPACE) is not None
