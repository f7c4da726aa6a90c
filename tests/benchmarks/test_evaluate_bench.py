"""benchmarks/evaluate.py: its rows parse the job's summary lines, and on the CPU with the tiny shape (the GPU
target's command scaled down) both rows run, attached to the session's Ray head, and are recorded."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.evaluate import row, table
from tests.conftest import REPO

OUTPUT = """MLflow run id: abc
perplexity: 510.5
compare_to.perplexity: 509.25
kl_mean: 0.0125
kl_p99: 0.05
top1_agreement: 0.9375
eval_seconds: 26.2
eval_load_seconds: 40.1
eval_tokens_per_second: 20010.7
gpu_peak_gib: 38.5
"""


def test_rows_read_the_summary_lines() -> None:
    r = row("compare-b8-w1", "compare", 8, 1, OUTPUT)
    assert (r["eval_tokens_per_second"], r["compare_to.perplexity"], r["kl_p99"], r["note"]) == (20010.7, 509.25,
                                                                                                0.05, "")
    failed = row("perplexity-b8-w1", "perplexity", 8, 1, "Traceback ...\nTIMED OUT after 540 s\n")
    assert math.isnan(failed["eval_seconds"]) and failed["note"] == "TIMED OUT after 540 s"
    lines = table([{**r, "kind": "perplexity", "target": True}, r, failed]).splitlines()
    assert lines[2].startswith("| compare-b8-w1 | 1 | 8 | 1.00x | 26.2 | 20,011 | 40.1 | 38.5 | 510.50 | 509.25 |")
    assert lines[3].startswith("| compare-b8-w1 | 1 | 8 |  | 26.2 |")  # a compare row: no target
    assert lines[4] == "| perplexity-b8-w1 | 1 | 8 |  | " + " | ".join(["-"] * 9) + " | TIMED OUT after 540 s |"


def test_tiny_shape_on_cpu(tmp_path: Path, ray_head) -> None:
    results = tmp_path / "RESULTS.md"
    cmd = [sys.executable, "-m", "benchmarks.evaluate", "--shape", "tiny", "--layers", "2", "--samples", "8",
           "--seq-len", "64", "--batch-size", "4", "--work", str(tmp_path / "work"), "--results", str(results),
           "--address", ray_head.address, "--pycache", ""]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **ray_head.env})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    text = results.read_text()
    assert "### Evaluate, tiny shape (2 blocks), 8 x 64 tokens, compare: rtn vs FP: cpu" in text
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in text.splitlines() if line.startswith("| perplexity-") or line.startswith("| compare-")}
    assert set(cells) == {"perplexity-b4-w1", "compare-b4-w1"}, text
    for name, values in cells.items():  # workers, batch, vs target, eval s, tokens/s, ..., note
        assert float(values[4].replace(",", "")) > 0 and values[-1] == "", (name, values)
    kl_mean, kl_p99 = (float(v) for v in cells["compare-b4-w1"][9:11])
    assert 0 < kl_mean <= kl_p99 and cells["perplexity-b4-w1"][9] == "-"
