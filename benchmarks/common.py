"""What every benchmark shares: running a logged subprocess, the common flags, recording a result table."""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_logged(cmd: list[str], log: Path) -> str:
    """stdout + stderr of `cmd` (run from the repo), also written to `log`; a failure is printed, not raised:
    one failed configuration leaves the others' rows."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_ALLOW_FILE_STORE": "true"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(f"FAILED ({proc.returncode}): {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-3000:]}", flush=True)
    return proc.stdout + proc.stderr


def add_common_args(parser: argparse.ArgumentParser, work: str) -> None:
    parser.add_argument("--work", default=work)
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
