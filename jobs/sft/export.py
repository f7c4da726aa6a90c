"""Consolidated Hugging Face export: safetensors (sharded above a size) + config + generation config + tokenizer,
published atomically. Metadata rules (dtype, use_cache, eos / pad): core/models/export.py."""

from __future__ import annotations

import copy
import json
from typing import Any

import torch

from core import storage
from core.models.export import (
    MAX_SHARD_SIZE,
    export_config,
    export_dtype,
    hf_state_dict,
    save_weights,
    write_generation_config,
)
from core.tracking import RunHandle, log_export


def gather_state_dict(engine: Any) -> dict[str, torch.Tensor] | None:
    """Full weights on rank 0 (None elsewhere); a collective, so every rank calls it."""
    if engine.zero_optimization_stage() == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items()} if state else None


def write_export(state: dict[str, torch.Tensor], hf_config: Any, tokenizer: Any, final: str, run: RunHandle, *,
                 saver: Any = None, log_exports: Any = "auto", max_shard_size: int | str = MAX_SHARD_SIZE) -> str:
    """Rank 0: write into a staging dir, record it in MLflow (tracking.log_exports), then publish it as `final`
    atomically. `hf_config` is the input model's config as its source gives it (not the trained model's, which
    training changed: dtype, use_cache); `saver` (a VLM's processor) saves the tokenizer files, else `tokenizer`."""
    from core.models.auto import from_config

    staged = storage.staging_dir(final)
    dtype = export_dtype(hf_config)
    config = copy.deepcopy(hf_config)
    with torch.device("meta"):
        shell = from_config(config)  # holds no memory: the class's on-disk names and tied weights
    weights = {name: tensor.to(dtype) if tensor.is_floating_point() else tensor
               for name, tensor in hf_state_dict(shell, state).items()}
    save_weights(weights, staged, max_shard_size)
    fields = json.loads(config.to_json_string(use_diff=False)) | {"architectures": [type(shell).__name__]}
    fields = export_config(fields, tokenizer, dtype)
    (staged / "config.json").write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
    write_generation_config(staged, fields, tokenizer)
    (saver or tokenizer).save_pretrained(staged)
    log_export(run, staged, final, log_exports)
    return storage.publish_dir(staged, final)
