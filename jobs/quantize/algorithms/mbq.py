"""MBQ: modality-balanced quantization (Li et al., CVPR 2025) for vision-language models. AWQ's scale search
(awq.py, reused as is) with a reconstruction loss that weights vision and text tokens by how much each
modality's output error moves the caption loss:

    loss(s) = w_vision * MSE(vision tokens) + w_text * MSE(text tokens)       (normalize: modality)
            = w_vision * SSE(vision tokens) + w_text * SSE(text tokens)       (normalize: tokens)

of the scope's output (attention / MLP / the Linear, as in AWQ). The weights are per decoder block: before
calibration one pass of the FP model over the calibration rows back-propagates the caption loss block by
block (jobs/quantize/modality.py, on core/blocks/backward.py's backward_by_block) and takes the mean
|dL/dY_block| over vision tokens, g_v, and over text tokens, g_t: w_vision = g_v / g_t, w_text = 1 (only the
ratio changes the argmin). weights=equal sets both to 1: with normalize=tokens that is AWQ exactly.

Each token's weight goes to AWQ as its per-token mask (w_m / N_m, N_m = the modality's calibration tokens
over all workers, so shard sums add up to the whole loss). With an activation-quantized format (w4a8, w8a8)
the candidates are SmoothQuant's s = max|x|^alpha / max|W|^(1-alpha) over the same alpha grid, scored with
the mapping's inputs fake-quantized per token (x / s, then back), so the alpha search sees the same weighted
loss; only norm-fed mappings are smoothed (SmoothQuant's default) unless smooth_linear_prev.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.blocks.mappings import ResolvedMapping
from core.errors import ConfigError
from core.quant.act_quant import act_quant_inputs
from jobs.quantize.algorithms.awq import AWQ, AWQConfig
from jobs.quantize.algorithms.smoothquant import smooth_scales
from jobs.quantize.algorithms.stats import Stats

TEXT, VISION = 1, 2  # core.data.calib_mm codes (0: padding)
NORMALIZE = ("modality", "tokens")
WEIGHTS = ("gradient", "equal")


@dataclass
class MBQConfig(AWQConfig):
    normalize: str = "modality"  # modality: w_v * MSE_v + w_t * MSE_t (the paper's) | tokens: w_v * SSE_v + w_t * SSE_t
    weights: str = "gradient"  # gradient: w_v = g_v / g_t, w_t = 1 | equal: both 1 (the ablation)
    smooth_linear_prev: bool = False  # W/A formats: also smooth v -> o and up -> down

    def validate(self, field_name: str) -> None:
        super().validate(field_name)
        for key, allowed in (("normalize", NORMALIZE), ("weights", WEIGHTS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{field_name}.{key}", f"must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, key)!r}")


def token_weights(modality: torch.Tensor, weights: Mapping[str, Any], normalize: str = "modality",
                  equal: bool = False) -> torch.Tensor:
    """Per-token loss weights [B, T] float32: w_m / N_m (normalize=modality) or w_m on tokens of modality m,
    0 on padding. `weights`: {"w_vision", "w_text", "n_vision", "n_text"} of one block."""
    out = torch.zeros(modality.shape, dtype=torch.float32, device=modality.device)
    for code, name in ((VISION, "vision"), (TEXT, "text")):
        w = 1.0 if equal else float(weights[f"w_{name}"])
        if normalize == "modality":
            w /= max(int(weights[f"n_{name}"]), 1)
        out[modality == code] = w
    return out


class MBQ(AWQ):
    name = "mbq"
    Config = MBQConfig
    needs_modality_grads = True

    def token_masks(self, modality: torch.Tensor | None, weights: Mapping[str, Any] | None) -> torch.Tensor | None:
        if modality is None:
            raise ValueError("mbq: calibration rows carry no modality (use calib=image_caption)")
        if weights is None and self.cfg.weights == "gradient":
            raise ValueError("mbq: no modality weights for this block (the gradient pass runs first)")
        return token_weights(modality, weights or {"n_vision": 1, "n_text": 1}, self.cfg.normalize,
                             equal=self.cfg.weights == "equal")

    def input_stats(self, key: str, x: torch.Tensor, stats: Stats) -> None:
        super().input_stats(key, x, stats)
        if self.fmt.act_bits:
            stats.add(f"absmax/{key}", x.abs().amax(0), op="max")

    def _mappings(self, block: nn.Module) -> tuple[list[ResolvedMapping], list[str]]:
        resolved, skipped = super()._mappings(block)
        if not self.fmt.act_bits or self.cfg.smooth_linear_prev:
            return resolved, skipped
        kept = [m for m in resolved if m.prev_is_norm]
        skipped += [f"{m.prev_name} -> {', '.join(m.linear_names)}: not norm-fed (smooth_linear_prev=false)"
                    for m in resolved if not m.prev_is_norm]
        return kept, skipped

    def _candidates(self, stats: Stats, m: ResolvedMapping) -> torch.Tensor:
        if not self.fmt.act_bits:
            return super()._candidates(stats, m)
        weights = [lin.weight for lin in m.linears]
        return torch.stack([smooth_scales(stats[f"absmax/{m.key}"], weights, k / self.cfg.n_grid)
                            for k in range(self.cfg.n_grid)])

    def scoring(self, m: ResolvedMapping, s: torch.Tensor) -> AbstractContextManager:
        return act_quant_inputs(m.linears, self.fmt.act_bits, s) if self.fmt.act_bits else nullcontext()
