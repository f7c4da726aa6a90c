"""Triton versions of kernels.quant.reference ops (CUDA only); `get_op` picks them when usable.

gptq_block: the reference walks B columns with ~8 small torch kernels each (a few thousand launches per
Linear, the cost that dominates GPTQ on a GPU). Here one program owns BLOCK_ROWS rows and the whole
[rows, B] batch stays in registers: per column it extracts the column, rounds it, and applies the
rank-1 error update to the batch, so a batch is one launch. Rounding is half-to-even and division is
IEEE round-to-nearest, as in torch; the update may fuse into an FMA, so a value within an ulp of a
rounding boundary can round the other way than the reference (the tests bound how often).

per_token_quant_delta: the reference takes ~9 passes over a float32 copy of the activations (abs, amax, divide,
round, clamp, multiply, subtract, casts); sensitivity scoring calls it for every w8a8 candidate of every Linear.
Here one program owns a row: one read for the max, one read and one write of the difference in the input's dtype;
the same operations in the same order as the reference, so the same values. (A Llama-3-8B scan peaks 3 GiB lower
with it; its time effect was within the spread of the machines measured.)

weight_quant_delta: the reference's fake quant takes ~15 passes over float32 copies of the weight (amin, amax, divide,
round, clamp, int8, back to float, multiply, subtract, casts), for every candidate of every Linear on every batch of
a sensitivity scan (about 1 s of an 8B scan's 11 s on an H200). Here a program owns a row's chunk of whole groups
(or, per channel, the whole row): one read of the weight, one write of the difference; the same operations in the
same order as the reference, so the same values.

rowdot: the reference casts both operands to float32 copies, multiplies into a third and sums it; here each row is
read once in its own dtype and summed in float32 registers (the order of the sum differs: float32 rounding).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from kernels.quant.formats import QuantFormat
from kernels.quant.reference import grid_steps, qrange

BLOCK_ROWS = 16


@triton.jit
def _gptq_block_kernel(w_ptr, h_ptr, s_ptr, z_ptr, q_ptr, e_ptr, rows, stride_w, stride_s, stride_sc, stride_z,
                       stride_zc, stride_q, stride_e, qmin, qmax, B: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    r = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    c = tl.arange(0, B)
    live = r < rows
    w = tl.load(w_ptr + r[:, None] * stride_w + c[None, :], mask=live[:, None], other=0.0)
    for i in range(B):
        pick = (c == i)[None, :]
        col = tl.sum(tl.where(pick, w, 0.0), axis=1)
        s = tl.load(s_ptr + r * stride_s + i * stride_sc, mask=live, other=1.0)
        z = tl.load(z_ptr + r * stride_z + i * stride_zc, mask=live, other=0.0)
        d = tl.load(h_ptr + i * B + i)
        hrow = tl.load(h_ptr + i * B + c)  # upper triangular: zeros before i
        q = tl.minimum(tl.maximum(libdevice.rint(tl.div_rn(col, s)) + z, qmin), qmax)
        err = tl.div_rn(col - (q - z) * s, d)
        w = w - err[:, None] * hrow[None, :]
        tl.store(q_ptr + r * stride_q + i, q.to(tl.int8), mask=live)
        tl.store(e_ptr + r * stride_e + i, err, mask=live)


def gptq_block(
    w: torch.Tensor, hinv: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    rows, width = w.shape
    if not w.is_cuda or w.dtype != torch.float32 or width & (width - 1) or width > 256:
        from kernels.quant import reference  # power-of-two batches up to 256 columns only

        return reference.gptq_block(w, hinv, scale, zero, bits)
    w, hinv = w.contiguous(), hinv.float().contiguous()
    scale, zero = scale.float(), zero.float()
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    err = torch.empty_like(w)
    qmin, qmax = qrange(bits)
    grid = (triton.cdiv(rows, BLOCK_ROWS),)
    _gptq_block_kernel[grid](w, hinv, scale, zero, q, err, rows, w.stride(0), *scale.stride(), *zero.stride(),
                             q.stride(0), err.stride(0), float(qmin), float(qmax), B=width, BLOCK_ROWS=BLOCK_ROWS)
    return q, err


@triton.jit
def _per_token_delta_kernel(x_ptr, out_ptr, cols, stride_x, stride_o, qmin, qmax, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, cols, BLOCK):
        c = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * stride_x + c, mask=c < cols, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.div_rn(tl.max(amax, axis=0), qmax)  # a true division, as the reference's on every device
    scale = tl.where(scale > 0, scale, 1.0)
    for start in range(0, cols, BLOCK):
        c = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * stride_x + c, mask=c < cols, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(libdevice.rint(tl.div_rn(x, scale)), qmin), qmax)
        # the product rounded on its own (no FMA), as the reference's separate multiply and subtract
        delta = libdevice.mul_rn(q, scale) - x
        tl.store(out_ptr + row * stride_o + c, delta.to(out_ptr.dtype.element_ty), mask=c < cols)


def per_token_quant_delta(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    if not x.is_cuda or x.dtype not in (torch.bfloat16, torch.float16, torch.float32) or not x.numel():
        from kernels.quant import reference

        return reference.per_token_quant_delta(x, bits)
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.empty_like(rows)
    qmin, qmax = qrange(bits)
    with torch.cuda.device(x.device):  # Triton launches on the current device
        _per_token_delta_kernel[(rows.shape[0],)](rows, out, rows.shape[1], rows.stride(0), out.stride(0),
                                                  float(qmin), float(qmax), BLOCK=1024)
    return out.view(x.shape)


@triton.jit
def _weight_delta_kernel(w_ptr, out_ptr, cols, size, n_groups, stride_w, stride_o, qmin, qmax, steps,
                         SYMMETRIC: tl.constexpr, GROUP: tl.constexpr, GROUPS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    group = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)[:, None]  # [GROUPS, 1]: this program's groups
    j = tl.arange(0, GROUP)[None, :]  # [1, GROUP]: element within a group (GROUP: size rounded up to a power of 2)
    col = group * size + j
    mask = (j < size) & (group < n_groups)
    w = tl.load(w_ptr + row * stride_w + col, mask=mask, other=0.0).to(tl.float32)
    lo = tl.minimum(tl.min(w, axis=1), 0.0)[:, None]  # masked lanes read 0, which the range includes anyway
    hi = tl.maximum(tl.max(w, axis=1), 0.0)[:, None]
    # steps: reference.grid_steps, computed on the host
    if SYMMETRIC:
        scale = tl.div_rn(tl.maximum(-lo, hi), steps)
    else:
        scale = tl.div_rn(hi - lo, steps)
    scale = tl.where(scale > 0, scale, 1.0)
    if SYMMETRIC:
        zero = tl.zeros_like(scale)
    else:
        zero = tl.minimum(tl.maximum(qmin - libdevice.rint(tl.div_rn(lo, scale)), qmin), qmax)
    q = tl.minimum(tl.maximum(libdevice.rint(tl.div_rn(w, scale)) + zero, qmin), qmax)
    delta = libdevice.mul_rn(q - zero, scale) - w  # the product rounded on its own, as the reference's
    tl.store(out_ptr + row * stride_o + col, delta.to(out_ptr.dtype.element_ty), mask=mask)


def weight_quant_delta(w: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    rows, cols = w.shape if w.dim() == 2 else (0, 0)
    size = fmt.group_size or cols
    if (not w.is_cuda or w.dtype not in (torch.bfloat16, torch.float16, torch.float32) or not rows or not cols
            or cols % size):
        from kernels.quant import reference

        return reference.weight_quant_delta(w, fmt)  # also the reference's error for a group that does not divide
    w = w.contiguous()
    out = torch.empty_like(w)
    qmin, qmax = qrange(fmt.weight_bits)
    group = triton.next_power_of_2(size)
    groups = max(1, 1024 // group)  # about 1024 elements a program
    n_groups = cols // size
    with torch.cuda.device(w.device):
        _weight_delta_kernel[(rows, triton.cdiv(n_groups, groups))](
            w, out, cols, size, n_groups, w.stride(0), out.stride(0), float(qmin), float(qmax),
            grid_steps(fmt.weight_bits, fmt.symmetric),
            SYMMETRIC=fmt.symmetric, GROUP=group, GROUPS=groups, num_warps=8 if group >= 4096 else 4)
    return out


@triton.jit
def _rowdot_kernel(p_ptr, q_ptr, out_ptr, cols, stride_p, stride_q, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, cols, BLOCK):
        c = start + tl.arange(0, BLOCK)
        a = tl.load(p_ptr + row * stride_p + c, mask=c < cols, other=0.0).to(tl.float32)
        b = tl.load(q_ptr + row * stride_q + c, mask=c < cols, other=0.0).to(tl.float32)
        acc += a * b
    tl.store(out_ptr + row, tl.sum(acc, axis=0))


def rowdot(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    if not p.is_cuda or p.device != q.device or p.shape != q.shape or p.dim() != 2 or not p.numel():
        from kernels.quant import reference

        return reference.rowdot(p, q)
    p, q = p.contiguous(), q.contiguous()
    out = torch.empty(p.shape[0], dtype=torch.float32, device=p.device)
    with torch.cuda.device(p.device):
        _rowdot_kernel[(p.shape[0],)](p, q, out, p.shape[1], p.stride(0), q.stride(0), BLOCK=1024)
    return out
