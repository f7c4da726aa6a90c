"""`trainer.fused_ops=liger`: the three ops of kernels/fused from Liger-Kernel's Triton kernels instead of the
project's compiled ones (RMSNorm in Llama casting: normalise in float32, cast back, then scale, as ops.rms_norm).
Same FusedOps, same installers: only the functions differ. CUDA only (Triton); liger-kernel is pyproject's
`liger` extra."""

from __future__ import annotations

from functools import cache

import torch

from kernels.fused import FusedOps, fused_ops


@cache
def liger_ops() -> FusedOps:
    """Liger's ops; ImportError without liger-kernel."""
    from liger_kernel.transformers.functional import liger_rms_norm, liger_swiglu
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return liger_rms_norm(x, weight, eps, 0.0, "llama")  # Liger's default: backward writes dX over dY

    def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        return liger_rotary_pos_emb(q, k, cos, sin, None, unsqueeze_dim)

    # the loss keeps the compiled cross entropy: Liger's was no faster on one H100 and its sum differed by 1e-3
    # relative (benchmarks/loss_chunk.py)
    return FusedOps(rms_norm=rms_norm, silu_mul=liger_swiglu, rotary=rotary,
                    cross_entropy_sum=fused_ops(compiled=True).cross_entropy_sum)
