"""A scoring worker (Ray actor): the whole model on its device, its shard of calibration batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.models import MODELS
from jobs.quantize.layerwise import Layerwise
from jobs.sensitivity.scoring import LinearScorer, model_linears, score_batches


def score_shard(spec: Any, batches: list[np.ndarray], names: list[str], use_gpu: bool,
                dtype: str) -> dict[str, dict[str, float]]:
    s = spec.search
    torch.set_num_threads(s.threads_per_worker)
    device = torch.device("cuda" if use_gpu else "cpu")
    source = MODELS.get(spec.model.name)
    torch.manual_seed(s.seed)
    model = source.build(spec.model, source.hf_config(spec.model), getattr(torch, dtype)).eval().to(device)
    lw = Layerwise(model)
    linears = model_linears(model, [lw.block_prefix(i) for i in range(len(lw.blocks))])
    scorer = LinearScorer({n: linears[n] for n in names}, list(s.candidates))
    score_batches(model, model.get_submodule(lw.arch.embed), scorer,
                  (torch.as_tensor(b, device=device) for b in batches))
    return scorer.scores
