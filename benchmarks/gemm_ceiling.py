"""The bf16 matmul ceiling of a training step's Linears: forward, input-gradient and weight-gradient GEMMs of the
Qwen3-1.7B shape's projections at a step's token count, timed alone (what MFU can reach if nothing else ran).

    python -m benchmarks.gemm_ceiling --tokens 24576
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

# (in, out) of each Linear in a Qwen3-1.7B block, then the lm_head
BLOCK = {"q": (2048, 2048), "k": (2048, 1024), "v": (2048, 1024), "o": (2048, 2048),
         "gate": (2048, 6144), "up": (2048, 6144), "down": (6144, 2048)}
HEAD = {"lm_head": (2048, 151936)}


def timed(fn: Callable[[], object], reps: int = 20) -> float:
    """Mean seconds per call of `fn` on the GPU, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=24576)
    parser.add_argument("--layers", type=int, default=28)
    args = parser.parse_args()
    t = args.tokens
    total_flops = total_time = 0.0
    print(f"{'linear':8} {'fwd TF/s':>9} {'dgrad':>9} {'wgrad':>9}")
    for name, (k, n) in {**BLOCK, **HEAD}.items():
        x = torch.randn(t, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        dy = torch.randn(t, n, device="cuda", dtype=torch.bfloat16)
        flops = 2 * t * k * n
        gemms = [lambda x=x, w=w: x @ w.t(), lambda dy=dy, w=w: dy @ w, lambda dy=dy, x=x: dy.t() @ x]
        times = [timed(g) for g in gemms]
        print(f"{name:8} " + " ".join(f"{flops / s / 1e12:9.0f}" for s in times))
        count = 1 if name == "lm_head" else args.layers
        total_flops += 3 * flops * count
        total_time += sum(times) * count
    rate = total_flops / total_time / 1e12
    print(f"all Linears of one step ({t} tokens): {total_time * 1e3:.1f} ms, {rate:.0f} TF/s")


if __name__ == "__main__":
    main()
