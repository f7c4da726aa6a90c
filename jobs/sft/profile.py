"""`trainer.profile_step`: one step under torch.profiler, to see where a step's time goes (the kernels
behind an MFU number). Rank 0 prints the top ops by self device time and logs that table and the Chrome
trace (open in chrome://tracing or Perfetto) to MLflow under profile/."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from core.tracking import RunHandle

TOP_OPS = 30


@contextmanager
def profiled(step: int, profile_step: int, device: torch.device, rank: int, run: RunHandle) -> Iterator[None]:
    if step != profile_step:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        yield
        if cuda:
            torch.cuda.synchronize()
    if rank != 0:
        return
    table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                      row_limit=TOP_OPS)
    print(f"profile of step {step} (rank 0):\n{table}", flush=True)
    run.log_text(table, f"profile/step{step}_ops.txt")
    with tempfile.TemporaryDirectory() as tmp:
        prof.export_chrome_trace(str(Path(tmp) / f"step{step}_trace.json"))
        run.log_artifacts(tmp, "profile")
