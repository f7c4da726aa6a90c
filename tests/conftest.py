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

# Small, fast SFT settings for CPU tests (2 workers, ZeRO-3 over gloo, every param partitioned).
FAST_SFT = [
    "data.max_length=256", "data.pack_max_length=256", "trainer.micro_batch_size=1",
    "trainer.num_workers=2", "trainer.zero.param_persistence_threshold=0", "cluster.include_dashboard=true",
]


def run_cli(args: list[str], storage: Path, timeout: int = 600, env: dict | None = None,
            ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "orchestrator", *args, f"job.storage={storage}"]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)


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
