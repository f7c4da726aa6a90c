"""Reference torch ops (any device, float32 math): qparams, quantize, dequantize, fake quant (packing: the
compressed-tensors library, core/quant/ct.py).

Weights are [out_features, in_features]; groups run along the input dim, so scales/zeros are
[out_features, n_groups] (n_groups = 1 for per-channel). Zeros are integer-valued floats here; an
exporter casts them with `.to(torch.int8)`.
"""

from __future__ import annotations

import torch

from kernels.quant.formats import QuantFormat


def qrange(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def grid_steps(bits: int, symmetric: bool) -> float:
    """The grid steps a scale divides: the group's range hi - lo (asymmetric), or max|w| from 0 (symmetric: half the
    signed range, 7.5 at 4 bits)."""
    qmin, qmax = qrange(bits)
    return (qmax - qmin) / 2 if symmetric else float(qmax - qmin)


def _math(t: torch.Tensor) -> torch.Tensor:
    """float32 math for low-precision inputs; float64 stays float64 (exactness checks)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _divide(t: torch.Tensor, number: float) -> torch.Tensor:
    """t / number, rounded the same on every device. Torch on CUDA divides by a Python number as t * (1/number),
    which can land a value that sits exactly on a rounding tie (a symmetric grid's -max|w| at -7.5 steps) on the
    other side than the CPU's true division: about a third of a weight's 4-bit groups quantized differently."""
    return t / torch.full_like(t, number)


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """[rows, cols] -> [rows, n_groups, group]."""
    rows, cols = w.shape
    size = group_size or cols
    if cols % size:
        raise ValueError(f"group size {size} does not divide {cols} columns")
    return w.reshape(rows, cols // size, size)


def compute_qparams(
    w: torch.Tensor,
    bits: int,
    group_size: int | None,
    symmetric: bool,
    clip: float | torch.Tensor = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min/max scales and zero points per (row, group); `clip` (scalar or [rows, n_groups]) shrinks the range."""
    g = _grouped(_math(w), group_size)
    qmin, qmax = qrange(bits)
    # 0 must be representable (padding, pruned weights): widen the range to include it.
    lo = g.amin(-1).clamp(max=0) * clip
    hi = g.amax(-1).clamp(min=0) * clip
    scale = _divide(torch.maximum(-lo, hi) if symmetric else hi - lo, grid_steps(bits, symmetric))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero group: any scale works
    if symmetric:
        return scale, torch.zeros_like(scale)
    return scale, (qmin - torch.round(lo / scale)).clamp(qmin, qmax)


def quantize(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int | None
) -> torch.Tensor:
    """Round-to-nearest (half to even), clamped to the signed range; int8 [rows, cols]."""
    qmin, qmax = qrange(bits)
    g = _grouped(_math(w), group_size)
    q = torch.round(g / scale.unsqueeze(-1)) + zero.unsqueeze(-1)
    return q.clamp(qmin, qmax).reshape(w.shape).to(torch.int8)


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int | None
) -> torch.Tensor:
    g = _grouped(q.to(scale.dtype), group_size)
    return ((g - zero.unsqueeze(-1)) * scale.unsqueeze(-1)).reshape(q.shape)


def quantize_weight(
    w: torch.Tensor, fmt: QuantFormat, clip: float | torch.Tensor = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(int8 q, scale, zero) for a [out, in] weight in `fmt`."""
    scale, zero = compute_qparams(w, fmt.weight_bits, fmt.group_size, fmt.symmetric, clip)
    return quantize(w, scale, zero, fmt.weight_bits, fmt.group_size), scale, zero


def fake_quant(w: torch.Tensor, fmt: QuantFormat, clip: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Quantize then dequantize: values on the grid, in w's dtype."""
    q, scale, zero = quantize_weight(w, fmt, clip)
    return dequantize(q, scale, zero, fmt.group_size).to(w.dtype)


def weight_quant_delta(w: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """fake_quant(w) - w, formed in float32 (float64 stays) and returned in w's dtype: what quantizing a weight to
    `fmt` changes it by, rounded once (sensitivity scoring's dW)."""
    wm = _math(w)
    return (fake_quant(wm, fmt) - wm).to(w.dtype)


def fake_quant_per_token(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Dynamic symmetric per-token (last dim) activation quant, as vLLM's int8 kernels do (amax / 127)."""
    qmin, qmax = qrange(bits)
    xf = x.float()
    scale = _divide(xf.abs().amax(-1, keepdim=True), qmax)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (torch.round(xf / scale).clamp(qmin, qmax) * scale).to(x.dtype)


def per_token_quant_delta(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """fake_quant_per_token(x) - x, formed in float32 and returned in x's dtype (in bf16, Q_a(x) alone would be
    off by as much as its own rounding error, and the difference of two bf16 values with it)."""
    xf = x.float()
    return (fake_quant_per_token(xf, bits) - xf).to(x.dtype)


def rowdot(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-row dot products of two [rows, cols] tensors, in float32 (bf16 products summed in float32)."""
    return (p.float() * q.float()).sum(-1)


def gptq_block(
    w: torch.Tensor, hinv: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ's inner loop over one lazy batch of B columns (Frantar et al. 2022, Alg. 1).

    w [rows, B] float32 (not modified), hinv [B, B] the batch's block of the upper Cholesky factor of
    H^-1, scale/zero [rows, B] per column. Column by column: round, then spread the rounding error over
    the later columns of the batch. Returns (int8 q [rows, B], scaled errors [rows, B]) for the caller's
    lazy update of the columns after the batch.
    """
    w = w.clone()
    qmin, qmax = qrange(bits)
    q_out = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    err_out = torch.empty_like(w)
    for i in range(w.shape[1]):
        col, s, z = w[:, i], scale[:, i], zero[:, i]
        q = (torch.round(col / s) + z).clamp(qmin, qmax)
        err = (col - (q - z) * s) / hinv[i, i]
        w[:, i:] -= err[:, None] * hinv[i, i:][None, :]
        q_out[:, i], err_out[:, i] = q.to(torch.int8), err
    return q_out, err_out
