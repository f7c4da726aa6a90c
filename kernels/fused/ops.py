"""The elementwise chains of a decoder block, as plain torch: the reference (CPU, tests) and what
torch.compile fuses on CUDA (one Triton kernel forward, one backward, instead of 4-8 memory-bound passes).

Each function computes what the Hugging Face modules it replaces compute, with the same dtypes at its inputs and
outputs (tests/kernels/fused/test_fusions.py, float64). Inside one fused kernel inductor keeps intermediates in
float32, so in bf16 a fused result can differ from eager by the rounding eager does between its kernels (~1 ulp).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama/Qwen RMSNorm: normalise in float32, cast back, then scale (T5LayerNorm order)."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The SwiGLU product of a gated MLP: silu(gate) * up."""
    return F.silu(gate) * up


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross entropy, in float32 whatever the logits' dtype (as transformers' loss upcasts).
    Compiled, the upcast, log-sum-exp and its gradient run as fused passes over the bf16 logits instead of eager's
    float32 copies of a [tokens, vocab] tensor (benchmarks/loss_chunk.py)."""
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
           unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embedding of queries and keys (the rotate-half form of Llama/Qwen)."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
