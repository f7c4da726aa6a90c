"""The one place that knows where a causal LM keeps its decoder blocks, embeddings and rotary module, and
how a block is called on captured hidden states. Keyed by family (config.model_type); a new family is
one ARCHS entry, the algorithms' own wiring lives in algorithms/mappings.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.errors import ConfigError


@dataclass(frozen=True)
class Arch:
    layers: str  # ModuleList of decoder blocks
    embed: str  # token embedding
    rotary: str | None  # rotary module giving (cos, sin) from (x, position_ids); None: positions inside blocks
    model_types: tuple[str, ...]


ARCHS: dict[str, Arch] = {
    "llama": Arch("model.layers", "model.embed_tokens", "model.rotary_emb",
                  ("llama", "mistral", "qwen2", "qwen3")),
}


def detect_arch(model: nn.Module) -> Arch:
    model_type = getattr(model.config, "model_type", "")
    for arch in ARCHS.values():
        if model_type in arch.model_types:
            return arch
    known = ", ".join(t for a in ARCHS.values() for t in a.model_types)
    raise ConfigError("model", f"layerwise quantization does not know model_type {model_type!r} (known: {known})")


class Layerwise:
    """A model seen as embed -> blocks[0..n) (-> norm/head, never needed to calibrate)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.arch = model, detect_arch(model)
        self.blocks: nn.ModuleList = model.get_submodule(self.arch.layers)
        self.rotary = model.get_submodule(self.arch.rotary) if self.arch.rotary else None

    def block_prefix(self, index: int) -> str:
        return f"{self.arch.layers}.{index}."

    @torch.no_grad()
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_submodule(self.arch.embed)(ids)

    def block_kwargs(self, x: torch.Tensor) -> dict[str, Any]:
        """What the model passes a block besides hidden states. Calibration rows are full-length and
        unpadded, so no mask: sdpa/eager take the causal path (the block tests' convention)."""
        pos = torch.arange(x.shape[1], device=x.device).unsqueeze(0).expand(x.shape[0], -1)
        kwargs: dict[str, Any] = {"position_ids": pos}
        if self.rotary is not None:
            self.rotary.to(x.device)
            kwargs["position_embeddings"] = self.rotary(x, pos)
        return kwargs

    @torch.no_grad()
    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        y = block(x, **self.block_kwargs(x))
        return y[0] if isinstance(y, tuple) else y


def block_linears_in_features(model: nn.Module) -> dict[str, int]:
    """Full names of every decoder-block Linear -> in_features (for validation before any work)."""
    lw = Layerwise(model)
    return {f"{lw.block_prefix(i)}{name}": mod.in_features for i, block in enumerate(lw.blocks)
            for name, mod in block.named_modules() if isinstance(mod, nn.Linear)}
