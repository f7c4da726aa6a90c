"""The one model build every job uses: the registry's source, seeded by `model.seed` (a model built from a
config has random weights: every job and every process of a job gets the same ones)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import NumericError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

    from core.models.config import ModelConfig


def build_model(cfg: ModelConfig, dtype: torch.dtype, hf_config: PretrainedConfig | None = None) -> PreTrainedModel:
    """`cfg`'s model (built or loaded by its registry source, in `dtype`), its init seeded with `cfg.seed`; the
    caller's random state is left as it was (SFT's per-rank training randomness does not depend on the build)."""
    import torch

    from core.models.registry import MODELS

    source = MODELS.get(cfg.name)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        model = source.build(cfg, hf_config if hf_config is not None else source.hf_config(cfg), dtype)
    check_finite(model, cfg.path or cfg.name)
    return model


def check_finite(model: torch.nn.Module, source: str) -> None:
    """No NaN or Inf in any loaded weight (a corrupt checkpoint would otherwise flow on: calibration washes a
    NaN out into a normal-looking export). One reduction per tensor, on its device; empty (partitioned) skipped."""
    import torch

    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.numel() and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            count = int((~torch.isfinite(tensor)).sum())
            raise NumericError(name, f"{count} NaN/Inf value(s) in the weights loaded from {source}")
