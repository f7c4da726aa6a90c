"""A scoring task (Ray): the model on its device (or, larger than the GPU, streamed block by block), its shard of
calibration batches."""

from __future__ import annotations

import time
from typing import Any

import torch

from core.data.calib_mm import CalibRows
from core.models import MODELS
from core.models.auto import meta_model
from jobs.quantize.layerwise import Layerwise, fits_on, weight_bytes
from jobs.sensitivity.scoring import LinearScorer, ScoringBatch, model_linears, score_batches


def score_shard(spec: Any, batches: list[CalibRows], names: list[str], use_gpu: bool,
                dtype: str) -> dict[str, Any]:
    """Scores of `names` over `batches`, with the load and scoring seconds and (on a GPU) the peak memory
    allocated by this task (torch.cuda.max_memory_allocated since it started). `entered_at` (wall clock): when
    the task began, so the driver can tell a worker's start-up (process, imports) from its work."""
    entered_at, began = time.time(), time.perf_counter()
    s = spec.search
    torch.set_num_threads(s.threads_per_worker)
    device = torch.device("cuda" if use_gpu else "cpu")
    if use_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    source = MODELS.get(spec.model.name)
    torch.manual_seed(s.seed)
    # a model larger than the GPU stays on the CPU and its blocks are streamed (Layerwise.weights_on)
    stream = not fits_on(weight_bytes(meta_model(source, spec.model), getattr(torch, dtype)), device)
    weights_began = time.perf_counter()
    with torch.device("cpu") if stream else device:  # transformers loads straight onto the context's device
        model = source.build(spec.model, source.hf_config(spec.model), getattr(torch, dtype))
    model = model.eval()
    _sync(device)
    loaded = time.perf_counter()
    lw = Layerwise(model)
    linears = model_linears(model, [lw.block_prefix(i) for i in range(len(lw.blocks))])
    scorer = LinearScorer({n: linears[n] for n in names}, list(s.candidates))
    with lw.weights_on(device, stream) as place:
        score_batches(model, scorer, (_inputs(lw, b, device) for b in batches), place=place)
        scores = scorer.scores  # reading the sums synchronizes
    out: dict[str, Any] = {"scores": scores, "streamed": stream, "entered_at": entered_at,
                           "load_seconds": loaded - began,
                           "weights_seconds": loaded - weights_began,
                           "score_seconds": time.perf_counter() - loaded,
                           "tokens": int(sum(b.ids.size for b in batches))}
    if use_gpu:
        out["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def _inputs(lw: Layerwise, batch: CalibRows, device: torch.device) -> ScoringBatch:
    """Token ids, the first block's inputs (token embeddings, or a VLM's merged image+text embeddings) and the
    next-token targets (caption labels; for text rows the ids themselves)."""
    return ScoringBatch(torch.as_tensor(batch.ids, device=device), lw.embed_rows(batch),
                        torch.as_tensor(batch.labels, device=device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
