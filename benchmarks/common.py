"""What every benchmark shares: running a logged subprocess, the common flags, recording a result table."""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_logged(cmd: list[str], log: Path, timeout: float | None = None) -> str:
    """stdout + stderr of `cmd` (run from the repo), also written to `log`; a failure is printed, not raised:
    one failed configuration leaves the others' rows. Past `timeout` seconds its whole process group is
    killed (Ray daemons included) and the output so far comes back, ending with a TIMED OUT line."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_ALLOW_FILE_STORE": "true"}
    alone = timeout is not None  # its own process group, to kill it whole
    with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=alone) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()  # what was read before the timeout is kept
            err += f"\nTIMED OUT after {timeout:.0f} s\n"
        except BaseException:  # interrupted (SIGTERM/SIGINT handlers): do not leave it running
            os.killpg(proc.pid, signal.SIGKILL) if alone else proc.kill()
            raise
    log.write_text(out + err)
    if proc.returncode != 0:
        print(f"FAILED ({proc.returncode}): {' '.join(cmd)}\n{(out + err)[-3000:]}", flush=True)
    return out + err


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
