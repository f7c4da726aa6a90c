"""GPU time of the SFT loss over one step's target tokens (Qwen3-1.7B's 151,936-word head), forward + backward,
by implementation: the chunked loss as jobs/sft/chunked_loss.py runs it (lm_head recomputed per chunk) with its
cross entropy eager, compiled, or Liger's; and Liger's fused linear cross entropy (gradients made in the forward,
no recompute). Checks each against the eager loss and gradients.

    python -m benchmarks.loss_chunk --tokens 24576 --chunk 4096
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from benchmarks.gemm_ceiling import timed
from jobs.sft.chunked_loss import _summed_ce
from kernels.fused import fused_ops
from kernels.fused.ops import cross_entropy_sum

VOCAB, HIDDEN = 151936, 2048
Loss = Callable[[nn.Linear, torch.Tensor, torch.Tensor, int], torch.Tensor]


def chunked(ce: Callable) -> Loss:
    """jobs/sft/chunked_loss.py's loop over chunks (the last one shorter), with `ce` per chunk."""
    def loss(head: nn.Linear, feats: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        total = feats.new_zeros((), dtype=torch.float32)
        for k in range(0, len(targets), chunk):
            total = total + checkpoint(_summed_ce, head, feats[k:k + chunk], targets[k:k + chunk], ce,
                                       use_reentrant=False)
        return total
    return loss


def implementations() -> dict[str, Loss]:
    out = {"eager CE": chunked(cross_entropy_sum), "compiled CE": chunked(fused_ops(compiled=True).cross_entropy_sum)}
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy, liger_fused_linear_cross_entropy
    except ImportError:
        return out
    out["Liger CE"] = chunked(lambda logits, t: liger_cross_entropy(logits, t, reduction="sum"))
    out["Liger fused linear CE"] = lambda head, feats, targets, chunk: liger_fused_linear_cross_entropy(
        feats, head.weight, targets, reduction="sum")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=24576)
    parser.add_argument("--chunk", type=int, default=4096)
    args = parser.parse_args()
    torch.manual_seed(0)
    head = nn.Linear(HIDDEN, VOCAB, bias=False, device="cuda", dtype=torch.bfloat16)
    feats = torch.randn(args.tokens, HIDDEN, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, VOCAB, (args.tokens,), device="cuda")
    reference = None
    print(f"{'loss':24} {'ms fwd+bwd':>10} {'peak GiB':>9} {'rel loss err':>12} {'feats grad cos':>14}")
    for name, fn in implementations().items():
        def step(fn=fn):
            feats.grad, head.weight.grad = None, None
            fn(head, feats, targets, args.chunk).backward()
        torch.cuda.reset_peak_memory_stats()
        seconds = timed(step, reps=5)
        loss = fn(head, feats, targets, args.chunk)
        feats.grad = None
        loss.backward()
        got = (loss.detach().double().cpu(), feats.grad.double().flatten().cpu())  # off the GPU: no later peak
        reference = reference or got
        err = (got[0] - reference[0]).abs().item() / reference[0].abs().item()
        cos = nn.functional.cosine_similarity(got[1], reference[1], dim=0).item()
        print(f"{name:24} {seconds * 1e3:10.1f} {torch.cuda.max_memory_allocated() / 2**30:9.1f} {err:12.2e} "
              f"{cos:14.6f}")


if __name__ == "__main__":
    main()
