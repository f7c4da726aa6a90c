"""The driver names its worker class by import path (jobs/sensitivity/driver.py): the path and the methods it
lists must be the worker's own."""

from __future__ import annotations

from core.cluster import _public_methods, _resolve
from jobs.sensitivity.driver import WORKER, WORKER_METHODS


def test_worker_path_and_methods_are_the_workers() -> None:
    assert _public_methods(_resolve(WORKER)) == sorted(WORKER_METHODS)
