"""Consolidated Hugging Face export: safetensors + config + tokenizer, published atomically."""

from __future__ import annotations

from typing import Any

import torch

from core import storage
from core.tracking import RunHandle


def gather_state_dict(engine: Any) -> dict[str, torch.Tensor] | None:
    """Full weights on rank 0 (None elsewhere); a collective, so every rank calls it."""
    if engine.zero_optimization_stage() == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items()} if state else None


def write_export(state: dict[str, torch.Tensor], hf_config: Any, tokenizer: Any, final: str, run: RunHandle) -> str:
    """Rank 0: write into a staging dir, log it to MLflow, then publish it as `final` atomically."""
    from core.models.auto import from_config

    staged = storage.staging_dir(final)
    with torch.device("meta"):
        shell = from_config(hf_config)  # holds no memory: only save_pretrained's logic
    shell.save_pretrained(staged, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(staged)
    run.log_artifacts(staged, "export")
    return storage.publish_dir(staged, final)
