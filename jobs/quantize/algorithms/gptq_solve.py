"""GPTQ's inverse-Hessian factor, computed in one n x n buffer.

GPTQ needs U, the upper Cholesky factor of (H + damp I)^-1. torch.linalg.cholesky, cholesky_inverse and a
second cholesky each return a new n x n matrix (and cuSOLVER's column-major layout adds transposed copies):
beside the Gram matrix that was 3-4 matrices of 0.8 GB for an 8B model's down_proj (n = 14336, float32),
the peak of the whole block. Here the factor is made in place, with blocked algorithms whose temporaries
are panels of `block` columns:

  H_r = J H J (J reverses the order)  = L L^T       cholesky_lower_
  V = L^-1                                          tril_inverse_
  U = J V J  (upper, and U^T U = J H_r^-1 J = H^-1) rotate_180_
"""

from __future__ import annotations

import torch

BLOCK = 512  # panel width: large enough for GEMM speed, small next to n x n


def cholesky_lower_(a: torch.Tensor, block: int = BLOCK) -> bool:
    """`a` (symmetric positive definite; its lower triangle is read) := its lower Cholesky factor, zeros
    above. Right-looking blocked algorithm. False when `a` is not positive definite (`a` is then garbage)."""
    n = a.shape[0]
    failed = torch.zeros((), dtype=torch.int32, device=a.device)
    for k in range(0, n, block):
        e = min(k + block, n)
        factor, info = torch.linalg.cholesky_ex(a[k:e, k:e])
        failed += info.clamp(0, 1)  # summed on the device: one sync at the end
        a[k:e, k:e] = factor
        if e < n:
            panel = torch.linalg.solve_triangular(factor.T, a[e:, k:e], upper=True, left=False)  # A21 L11^-T
            a[e:, k:e] = panel
            a[e:, e:].addmm_(panel, panel.T, alpha=-1)  # trailing update: A22 -= L21 L21^T
    a.tril_()
    return failed.item() == 0 and bool(torch.isfinite(a.diagonal()).all())


def tril_inverse_(a: torch.Tensor, block: int = BLOCK) -> None:
    """`a` (lower triangular, invertible, zeros above) := its inverse, last diagonal block first:
    [L11 0; L21 L22]^-1 = [L11^-1 0; -L22^-1 L21 L11^-1  L22^-1]."""
    n = a.shape[0]
    for k in reversed(range(0, n, block)):
        e = min(k + block, n)
        eye = torch.eye(e - k, dtype=a.dtype, device=a.device)
        inv = torch.linalg.solve_triangular(a[k:e, k:e], eye, upper=False)
        if e < n:  # a[e:, e:] already holds L22^-1
            a[e:, k:e] = -(a[e:, e:] @ a[e:, k:e]) @ inv
        a[k:e, k:e] = inv


def rotate_180_(a: torch.Tensor, block: int = BLOCK) -> None:
    """a := J a J (both orders reversed), swapping row panels from the two ends."""
    n = a.shape[0]
    half = n // 2
    for r in range(0, half, block):
        s = min(r + block, half)
        top = a[r:s].flip(0, 1)  # a copy
        a[r:s] = a[n - s:n - r].flip(0, 1)
        a[n - s:n - r] = top
    if n % 2:
        a[half] = a[half].flip(0)


def upper_inverse_factor_(h_reversed: torch.Tensor, block: int = BLOCK) -> bool:
    """`h_reversed` (J H J, H symmetric positive definite) := U, upper triangular with U^T U = H^-1.
    False when H is not positive definite."""
    if not cholesky_lower_(h_reversed, block):
        return False
    tril_inverse_(h_reversed, block)
    if not bool(torch.isfinite(h_reversed.diagonal()).all()):  # a tiny pivot overflowed: damp more
        return False
    rotate_180_(h_reversed, block)
    return True
