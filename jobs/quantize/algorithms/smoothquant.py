"""SmoothQuant (Xiao et al. 2023) for W8A8 / W4A8: move activation outliers into the weights with a
per-input-channel s_j = max|X_j|^alpha / max|W_j|^(1-alpha), folded into the preceding norm, then
round-to-nearest weights; activations are fake-quantized per token (int8, dynamic) at run time.

Stats: per shared input, max over tokens of |x| (reduced by max), plus x^T x for metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from core.blocks.mappings import fold_scales, require_wiring, resolve_mappings
from core.errors import ConfigError
from jobs.quantize.algorithms.base import AlgorithmConfig, BlockResult, QuantAlgorithm, RunBlock
from jobs.quantize.algorithms.stats import Stats
from kernels.quant import QuantFormat, get_op


@dataclass
class SmoothQuantConfig(AlgorithmConfig):
    alpha: float = 0.5  # migration strength: 0 keeps activations as they are, 1 moves all to weights
    # The paper smooths the inputs that follow a norm; this also folds into v_proj and up_proj.
    smooth_linear_prev: bool = False

    def validate(self, field_name: str) -> None:
        super().validate(field_name)
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"{field_name}.alpha", f"must be in [0, 1], got {self.alpha}")


class SmoothQuant(QuantAlgorithm):
    name = "smoothquant"
    fp_block_cost = 0.3  # an estimate, not measured: a stats pass, the smoothing, an error forward
    Config = SmoothQuantConfig

    def prepare(self, block: nn.Module, fmt: QuantFormat, run_block: RunBlock | None = None,
                formats: Mapping[str, QuantFormat | None] | None = None) -> None:
        if fmt.act_bits is None:
            raise ConfigError("quant.format", f"smoothquant needs an activation-quantized format "
                              f"(w8a8, w4a8, w4a8g128, ...), got {fmt.name!r}")
        super().prepare(block, fmt, run_block, formats)
        self.family = require_wiring(block, self.name)

    def input_stats(self, key: str, x: torch.Tensor, stats: Stats) -> None:
        super().input_stats(key, x, stats)
        stats.add(f"absmax/{key}", x.abs().amax(0), op="max")

    def quantize(self, block: nn.Module, stats: Stats, result: BlockResult) -> None:
        mappings, skipped = resolve_mappings(block, self.family)
        result.info["skipped_mappings"] = skipped
        input_scale: dict[str, torch.Tensor] = {}
        for m in mappings:
            if not (m.prev_is_norm or self.cfg.smooth_linear_prev):
                continue
            s = smooth_scales(stats[f"absmax/{m.key}"], [lin.weight for lin in m.linears], self.cfg.alpha)
            fold_scales(m, s)
            result.smoothing[m.prev_name] = s
            input_scale[m.key] = s
        quantize_weight = get_op("quantize_weight")
        for name, lin in self.targets(block).items():
            gram = self.gram(stats, name)
            s = input_scale.get(self.group_key[name])
            if gram is not None and s is not None:
                gram = gram / (s[:, None] * s[None, :]).to(gram.dtype)
            q, scale, zero = quantize_weight(lin.weight, self.fmt)
            self.commit(block, name, q, scale, zero, result, gram)


def smooth_scales(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1-alpha), W_j over all rows of all Linears sharing the input."""
    w_absmax = torch.stack([w.detach().float().abs().amax(0) for w in weights]).amax(0)
    x = act_absmax.float().to(w_absmax.device)
    s = (x.pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)
    return torch.where(x > 0, s, torch.ones_like(s))  # a channel never seen non-zero: leave it alone
