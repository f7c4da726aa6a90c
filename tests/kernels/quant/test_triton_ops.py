"""Triton ops against the torch reference (CUDA only: skipped on CPU machines, run on the GPU machine)."""

from __future__ import annotations

import pytest
import torch

from kernels.quant import get_op, parse_format, reference

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton kernels need CUDA")


def _batch(rows: int, width: int, bits: int, gen: torch.Generator):
    w = torch.randn(rows, width, generator=gen)
    a = torch.randn(width, 4 * width, generator=gen)
    h = a @ a.T / (4 * width) + 0.1 * torch.eye(width)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    scale, zero = reference.compute_qparams(w, bits, None, symmetric=False)
    return w, hinv, scale.expand(-1, width), zero.expand(-1, width)


@cuda
@pytest.mark.parametrize(("rows", "width", "bits"), [(1000, 128, 4), (4096, 64, 3), (77, 32, 8)])
def test_gptq_block_matches_reference(rows: int, width: int, bits: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    w, hinv, scale, zero = (t.cuda() for t in _batch(rows, width, bits, gen))
    q_ref, e_ref = reference.gptq_block(w, hinv, scale, zero, bits)
    q, e = get_op("gptq_block", backend="triton")(w, hinv, scale, zero, bits)
    # FMA vs separate multiply-subtract: a value within an ulp of a rounding boundary may round the
    # other way, and its error then propagates along the row; bound how often integers differ
    same = (q == q_ref).float().mean().item()
    assert same >= 0.999, f"only {same:.5f} of the integers agree with the reference (tolerance 0.999)"
    rows_same = (q == q_ref).all(1)
    diff = (e - e_ref)[rows_same].abs().max().item()
    assert diff <= 1e-4 * e_ref.abs().max().item(), f"errors differ by {diff:.2e} on rows with equal integers"


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("shape", "bits"), [((3, 37, 4096), 8), ((5, 14336), 8), ((64, 1000), 4)])
def test_per_token_quant_delta_matches_reference(shape: tuple, bits: int, dtype: torch.dtype) -> None:
    """Same max, scale, rounding (IEEE division, half-to-even) and separately rounded multiply and subtract as the
    reference: the same values."""
    gen = torch.Generator().manual_seed(len(shape) * bits)
    x = (torch.randn(shape, generator=gen) * torch.rand(*shape[:-1], 1, generator=gen) * 4).to(dtype).cuda()
    x[0, ..., :7] = 0  # part of a row zero; and one whole zero row: scale 1, delta 0
    x.view(-1, shape[-1])[-1] = 0
    ref = reference.per_token_quant_delta(x, bits)
    ours = get_op("per_token_quant_delta", backend="triton")(x, bits)
    assert ours.dtype == dtype and ours.shape == x.shape
    diff = (ours.float() - ref.float()).abs()
    assert torch.equal(ours, ref), f"{int((diff > 0).sum())} of {diff.numel()} differ, by up to {diff.max():.3g}"
    assert not ours.view(-1, shape[-1])[-1].any()


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize(("shape", "spec"), [((1024, 4096), "w4g128"), ((300, 14336), "w8"), ((64, 1000), "w4"),
                                             ((96, 4096), "w3g32"), ((77, 512), "w2g64"), ((40, 256), "w8g128"),
                                             ((8, 28672), "w8")])  # a 70B down_proj's row: one 32768-wide tile
def test_weight_quant_delta_matches_reference(shape: tuple, spec: str, symmetric: bool, dtype: torch.dtype) -> None:
    """Same range, scale and zero (IEEE division), half-to-even rounding and separately rounded multiply and
    subtract as the reference: the same values, for whole groups, per-channel rows (not a power of 2 long), an
    all-zero group and a row of quarters (-0.75..0.75: -7.5, -2.5, 2.5 and 7.5 steps at 4 bits, rounding ties)."""
    gen = torch.Generator().manual_seed(shape[1] + len(spec))
    w = (torch.randn(shape, generator=gen) * torch.rand(shape[0], 1, generator=gen) * 0.05).to(dtype).cuda()
    w[0, :32] = 0
    w[1] = torch.arange(shape[1], device="cuda").remainder(7).sub(3).to(dtype) * 0.25
    fmt = parse_format(spec, symmetric)
    ref = reference.weight_quant_delta(w, fmt)
    ours = get_op("weight_quant_delta", backend="triton")(w, fmt)
    assert ours.dtype == dtype and ours.shape == w.shape
    diff = (ours.float() - ref.float()).abs()
    assert torch.equal(ours, ref), f"{int((diff > 0).sum())} of {diff.numel()} differ, by up to {diff.max():.3g}"
    assert ref.abs().max() > 0, "the check needs quantization error to compare"


@cuda
@pytest.mark.parametrize("shape", [(33, 4096), (1000, 1024), (7, 14336), (5, 100)])
def test_rowdot_is_a_float32_sum_like_the_reference(shape: tuple) -> None:
    """bf16 rows, float32 sums in another order than the reference: both within 1e-5 of the float64 sum, relative
    to the sum of the products' magnitudes (what float32 rounding scales with)."""
    gen = torch.Generator().manual_seed(shape[1])
    p, q = (torch.randn(shape, generator=gen).to(torch.bfloat16).cuda() for _ in range(2))
    products = p.double() * q.double()
    exact, scale = products.sum(-1), products.abs().sum(-1)
    ours, ref = get_op("rowdot", backend="triton")(p, q), reference.rowdot(p, q)
    assert ours.dtype == torch.float32 and ours.shape == (shape[0],)
    for got in (ours, ref):
        assert ((got.double() - exact).abs() <= 1e-5 * scale).all(), (got.double() - exact).abs().max().item()
