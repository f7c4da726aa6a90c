"""Reconstruction error: per Linear from the calibration Gram matrix, per block from real forwards."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


def layer_metrics(w_ref: torch.Tensor, w_q: torch.Tensor, gram: torch.Tensor | None) -> dict[str, float]:
    """weight_rel_err = |W-Q|^2/|W|^2; output_rel_err = sum_x |x(W-Q)^T|^2 / sum_x |xW^T|^2 on the
    calibration inputs, computed exactly from G = sum x^T x as tr(D G D^T) / tr(W G W^T)."""
    w, d = w_ref.float(), w_ref.float() - w_q.float()
    tiny = torch.finfo(torch.float32).tiny
    out = {"weight_rel_err": (d.square().sum() / w.square().sum().clamp_min(tiny)).item()}
    if gram is not None:
        g = gram.to(w.device, torch.float32)
        err, ref = ((d @ g) * d).sum(), ((w @ g) * w).sum()
        out["output_rel_err"] = (err / ref.clamp_min(tiny)).item()
    return out


@torch.no_grad()
def block_output_error(
    ref_block: nn.Module,
    q_block: nn.Module,
    run_block: Callable[[nn.Module, torch.Tensor, int], torch.Tensor],
    inputs: Iterable[torch.Tensor],
) -> dict[str, float]:
    """mse of the quantized block's output vs the FP block's, and rel_err = that error over the energy
    of the FP block's update y - x (the residual stream passes through unchanged, so it would hide
    the error)."""
    sse = update = 0.0
    count = 0
    for k, x in enumerate(inputs):
        y_ref, y_q = _tensor(run_block(ref_block, x, k)).float(), _tensor(run_block(q_block, x, k)).float()
        sse += (y_q - y_ref).square().sum().item()
        update += (y_ref - x.float()).square().sum().item()
        count += y_ref.numel()
    return {"mse": sse / max(count, 1), "rel_err": sse / max(update, torch.finfo(torch.float32).tiny)}


def _tensor(y: torch.Tensor | tuple) -> torch.Tensor:
    return y[0] if isinstance(y, tuple) else y
