"""Triton ops against the torch reference (CUDA only: skipped on CPU machines, run on the GPU machine)."""

from __future__ import annotations

import pytest
import torch

from kernels.quant import get_op, reference

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
