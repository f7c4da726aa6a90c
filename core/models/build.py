"""The one model build every job uses: the registry's source, seeded by `model.seed` (a model built from a
config has random weights: every job and every process of a job gets the same ones)."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
        return source.build(cfg, hf_config if hf_config is not None else source.hf_config(cfg), dtype)
