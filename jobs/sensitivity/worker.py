"""A scoring worker (Ray actor): loads the model on its device when created (or, larger than the GPU, keeps it on
the CPU and streams it block by block), then scores shards of calibration batches.

Created by SensitivityJob.warm_up: on a cluster the job attaches to, that happens before the driver's prepare(),
so the worker's start (process, imports, CUDA) and the model load overlap the driver's own imports and data."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from core.blocks.backward import BlockBatch
from core.blocks.layerwise import Layerwise, fits_on, weight_bytes
from core.data.calib_mm import CalibRows
from core.models import MODELS, build_model
from core.models.auto import meta_model
from jobs.sensitivity.loss_delta import loss_delta_scores
from jobs.sensitivity.scoring import LinearScorer, model_linears, score_batches


def reported(items: Iterator[Any], total: int) -> Iterator[Any]:
    """`items`, printing `scored i/total batches` once the consumer is done with item i (it asks for the next)."""
    for done, item in enumerate(items, 1):
        yield item
        print(f"scored {done}/{total} batches", flush=True)


class ScoringWorker:
    def __init__(self, spec: Any, use_gpu: bool, dtype: str) -> None:
        """Load the model. `entered_at` (wall clock): when the actor began, so the driver can tell a worker's
        start-up (process, imports) from its work."""
        self.entered_at, began = time.time(), time.perf_counter()
        self.search = spec.search
        torch.set_num_threads(self.search.threads_per_worker)
        self.device = torch.device("cuda" if use_gpu else "cpu")
        if use_gpu:
            torch.cuda.reset_peak_memory_stats(self.device)
        source = MODELS.get(spec.model.name)
        # a model larger than the GPU stays on the CPU and its blocks are streamed (Layerwise.weights_on)
        self.stream = not fits_on(weight_bytes(meta_model(source, spec.model), getattr(torch, dtype)), self.device)
        weights_began = time.perf_counter()
        with torch.device("cpu") if self.stream else self.device:  # transformers loads onto the context's device
            self.model = build_model(spec.model, getattr(torch, dtype)).eval()
        _sync(self.device)
        loaded = time.perf_counter()
        self.load_seconds, self.weights_seconds = loaded - began, loaded - weights_began

    def score(self, batches: list[CalibRows], names: list[str], report: bool = False) -> dict[str, Any]:
        """Scores of `names` over `batches`, with the start, load and scoring seconds and (on a GPU) the peak memory
        allocated by this worker (torch.cuda.max_memory_allocated since it started). `report`: a line per batch
        scored (PROGRESS_LINE; the driver's progress bar follows one worker's)."""
        began = time.perf_counter()
        lw = Layerwise(self.model)
        linears = model_linears(self.model, [lw.block_prefix(i) for i in range(len(lw.blocks))])
        chosen, candidates = {n: linears[n] for n in names}, list(self.search.candidates)
        inputs = (_inputs(lw, b, self.device) for b in batches)
        inputs = reported(inputs, len(batches)) if report else inputs
        with lw.weights_on(self.device, self.stream) as place:
            if self.search.score == "loss_delta":
                scores = loss_delta_scores(self.model, chosen, candidates, inputs, place=place)
            else:
                scorer = LinearScorer(chosen, candidates)
                score_batches(self.model, scorer, inputs, place=place)
                scores = scorer.scores  # reading the sums synchronizes
        out: dict[str, Any] = {"scores": scores, "streamed": self.stream, "entered_at": self.entered_at,
                               "load_seconds": self.load_seconds, "weights_seconds": self.weights_seconds,
                               "score_seconds": time.perf_counter() - began,
                               "tokens": int(sum(b.ids.size for b in batches))}
        if self.device.type == "cuda":
            out["gpu_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return out


def _inputs(lw: Layerwise, batch: CalibRows, device: torch.device) -> BlockBatch:
    """Token ids, the first block's inputs (token embeddings, or a VLM's merged image+text embeddings) and calls,
    and the next-token targets (caption labels; for text rows the ids themselves)."""
    x, calls = lw.capture_rows(batch)
    return BlockBatch(torch.tensor(batch.ids, device=device), x, calls,  # a copy: ids may be read-only
                      torch.tensor(batch.labels, device=device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
