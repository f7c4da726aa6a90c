"""Where a sensitivity scan's GPU time goes, in one process (no Ray, no MLflow): a random-init model of the
Llama-3-8B shape cut to --blocks, --batches of --batch-size x --seq-len random tokens, and the scoring of
jobs/sensitivity/scoring.py timed warm (after one untimed run) with no candidate (the forward, loss and backward
alone), each candidate alone, and all of them; `--kernels N` prints the N costliest GPU kernels of the last.

    python -m benchmarks.sensitivity_profile --blocks 8 --kernels 25
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch

from benchmarks.quant import SHAPES
from core.blocks.layerwise import Layerwise
from jobs.sensitivity.scoring import LinearScorer, model_linears, score_batches


def seconds(run: Callable[[], None]) -> float:
    """Wall time of a warm `run` (one untimed run first: CUDA libraries, Triton compiles)."""
    run()
    torch.cuda.synchronize()
    began = time.perf_counter()
    run()
    torch.cuda.synchronize()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--candidates", default="w4g128,w8a8")
    parser.add_argument("--backend", choices=["auto", "torch"], default="auto",
                        help="torch: the reference quant ops instead of the Triton kernels (QUANT_BACKEND)")
    parser.add_argument("--kernels", type=int, default=0, help="print the N costliest GPU kernels of all candidates")
    args = parser.parse_args()
    os.environ["QUANT_BACKEND"] = args.backend
    if not torch.cuda.is_available():
        raise SystemExit("sensitivity_profile: needs a CUDA GPU")
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=args.blocks, **SHAPES[args.shape])
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    lw = Layerwise(model)
    linears = model_linears(model, [lw.block_prefix(i) for i in range(args.blocks)])
    batches = [torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len), device="cuda")
               for _ in range(args.batches)]
    candidates = args.candidates.split(",")

    def scan(cands: list[str]) -> Callable[[], None]:
        def run() -> None:
            scorer = LinearScorer(linears, [*cands, "fp16"])
            score_batches(model, scorer, batches)
            _ = scorer.scores  # reading the sums synchronizes
        return run

    print(f"{args.shape} x {args.blocks} blocks, {args.batches} x {args.batch_size} x {args.seq_len} tokens, "
          f"{torch.cuda.get_device_name()}, quant ops: {args.backend}")
    print("| scored | seconds (warm) |\n|---|---|")
    for label, cands in [("none (forward, loss, backward)", []), *[(c, [c]) for c in candidates],
                         (" + ".join(candidates), candidates)]:
        print(f"| {label} | {seconds(scan(cands)):.3f} |", flush=True)
    print(f"peak GPU GiB: {torch.cuda.max_memory_allocated() / 2**30:.2f}")
    if args.kernels:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            scan(candidates)()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.kernels,
                                        max_name_column_width=80))


if __name__ == "__main__":
    main()
