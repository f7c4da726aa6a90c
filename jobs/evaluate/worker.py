"""An evaluate worker (Ray actor): loads the model and the reference (eval.compare_to) onto its device as it starts
(on a cluster the job attaches to, while the driver prepares the inputs), then scores its part of the held-out
inputs with both, batch by batch, with the eval.metric's evaluator."""

from __future__ import annotations

import time
from typing import Any

import torch

from jobs.evaluate import sharded
from jobs.evaluate.perplexity import load_model
from jobs.evaluate.registry import EVALUATORS


class EvalWorker:
    def __init__(self, models: list[tuple[str, str, str | None, dict]], e: Any, seed: int, use_gpu: bool,
                 dtype: str) -> None:
        """`models`: (label, registry name, path, overrides) of each model to hold, in `dtype` on this worker's
        GPU (use_gpu) or CPU."""
        torch.set_num_threads(e.threads)
        self.e, self.device = e, torch.device("cuda" if use_gpu else "cpu")
        began = time.perf_counter()
        self.models = {label: load_model(name, path, overrides, seed=seed, dtype=getattr(torch, dtype),
                                         device=self.device) for label, name, path, overrides in models}
        _sync(self.device)
        self.load_seconds = time.perf_counter() - began

    def score(self, inputs: Any) -> dict[str, Any]:
        """Raw scores of every model on `inputs` (this worker's part), the seconds they took (load excluded) and,
        on a GPU, the peak memory allocated since the worker started (models included)."""
        began = time.perf_counter()
        raw = sharded.score(EVALUATORS.get(self.e.metric), self.models, inputs, self.e)
        _sync(self.device)
        out = {"raw": raw, "seconds": time.perf_counter() - began, "load_seconds": self.load_seconds}
        if self.device.type == "cuda":
            out["gpu_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
