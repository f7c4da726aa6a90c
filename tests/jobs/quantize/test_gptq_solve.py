"""The in-place inverse-Hessian factor (jobs/quantize/algorithms/gptq_solve.py) against torch.linalg in
float64. Sizes cover n below, at and above the panel width, and odd n (the middle row of the rotation)."""

import pytest
import torch

from jobs.quantize.algorithms.gptq_solve import (
    cholesky_lower_,
    rotate_180_,
    tril_inverse_,
    upper_inverse_factor_,
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA copy of the CPU checks (cuSOLVER/cuBLAS paths): no GPU here"))]
SIZES = [(1, 4), (5, 2), (130, 32), (257, 64), (300, 512)]


def spd(n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(3 * n, n, generator=gen, dtype=torch.float64)
    return (x.T @ x / n + 0.01 * torch.eye(n, dtype=torch.float64)).to(device, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("n", "block"), SIZES)
def test_cholesky_and_triangular_inverse_match_torch(n: int, block: int, device: str) -> None:
    h = spd(n, torch.float64, device)
    a = h.clone()
    assert cholesky_lower_(a, block)
    torch.testing.assert_close(a, torch.linalg.cholesky(h), rtol=0, atol=1e-12 * h.abs().max().item())
    ref_inv = torch.linalg.inv(a)
    tril_inverse_(a, block)
    torch.testing.assert_close(a, ref_inv, rtol=0, atol=1e-10 * ref_inv.abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("n", "block"), SIZES)
def test_rotation_reverses_both_orders(n: int, block: int, device: str) -> None:
    a = torch.arange(n * n, dtype=torch.float32, device=device).reshape(n, n)
    ref = a.flip(0, 1)
    rotate_180_(a, block)
    assert torch.equal(a, ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("n", "block"), SIZES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_upper_inverse_factor_is_cholesky_of_the_inverse(n: int, block: int, dtype: torch.dtype, device: str) -> None:
    h = spd(n, torch.float64, device)
    ref = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)  # U with U^T U = H^-1
    u = h.to(dtype).flip(0, 1).contiguous()
    assert upper_inverse_factor_(u, block)
    # float64: rounding only; float32: that of the library route in float32 (measured ~2e-7 of max|U|)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(u.double(), ref, rtol=0, atol=tol * ref.abs().max().item())


def test_not_positive_definite_is_reported() -> None:
    assert not upper_inverse_factor_(-torch.eye(10), 4)
    h = spd(40, torch.float64, "cpu")
    h[30, 30] = -1.0  # fails in a later panel, not the first
    assert not cholesky_lower_(h, 8)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("retry", [False, True])
def test_gptq_factor_matches_the_library_route(act_order: bool, retry: bool) -> None:
    """gptq._inverse_hessian_factor (reversed order, dead inputs, damping retries re-filling the buffer) against
    H[perm][:, perm] with dead diagonals 1, damped, and torch.linalg's Cholesky of its inverse, in float64."""
    from jobs.quantize.algorithms.gptq import LazyHessian, _inverse_hessian_factor

    n = 70
    h = spd(n, torch.float64, "cpu")
    dead = torch.zeros(n, dtype=torch.bool)
    dead[[3, 40]] = True
    h[dead, :] = 0
    h[:, dead] = 0
    if retry:  # shifted to a smallest eigenvalue of -5% of the mean diagonal: 1% damping fails, 10% works
        live = ~dead
        lowest = torch.linalg.eigvalsh(h[live][:, live]).min()
        mean = (torch.diag(h)[live].sum() + dead.sum()) / n  # dead diagonals count as 1
        shift = (lowest + 0.05 * mean) / (1 - 0.05 * live.sum() / n)
        h[live, live] -= shift
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else None
    got = _inverse_hessian_factor(LazyHessian(h), dead, perm, 0.01, n, torch.float64)

    order = perm if act_order else torch.arange(n)
    ref = h[order][:, order].clone()
    ref[dead[order], dead[order]] = 1
    damp = (0.1 if retry else 0.01) * torch.diag(ref).mean()
    ref += damp * torch.eye(n, dtype=torch.float64)
    ref_u = torch.linalg.cholesky(torch.linalg.inv(ref), upper=True)
    torch.testing.assert_close(got, ref_u, rtol=0, atol=1e-10 * ref_u.abs().max().item())
