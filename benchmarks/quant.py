"""`make bench-quant`: layerwise calibration speed of the orchestrator vs llm-compressor's oneshot.

A Llama-3-8B-shaped model (or --shape qwen3-30b-a3b: Qwen3-MoE, 128 experts; random init, bf16; --layers cuts
the depth) saved as a model directory,
128 x 512 calibration tokens; ours runs as `python -m orchestrator job=quantize model=hf ...` on 1 and 2
GPUs (quant.parallel=blocks: blocks are independent, calibrated on FP inputs), the peer as
benchmarks/peer_quant.py on 1 GPU with the same token ids. Reported per run: calibration wall time
(model loading excluded on both sides), seconds per block, peak GPU memory, and the block output error
of the first blocks on FP inputs (benchmarks/quant_error.py: the peer's read from its compressed export; ours
as the job records them, or with --export-errors from our export too). Rows go to --results with device,
date, commit.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import add_common_args, parse_args, record, run_logged

LLAMA3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
             "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
             "rope_theta": 500000.0, "tie_word_embeddings": False}
QWEN3_30B_A3B = {"model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144,
                 "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": True,
                 "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 151936,
                 "max_position_embeddings": 40960, "rope_theta": 1000000.0, "tie_word_embeddings": False}
# Llama-3's vocabulary and head layout at width 512, and a small Qwen3-MoE: side-by-side quality checks on a CPU
SHAPES = {"llama3-8b": LLAMA3_8B,
          "llama3-small": {**LLAMA3_8B, "hidden_size": 512, "intermediate_size": 1792, "num_attention_heads": 8,
                           "num_key_value_heads": 2},
          "qwen3-30b-a3b": QWEN3_30B_A3B,
          "qwen3-moe-small": {**QWEN3_30B_A3B, "hidden_size": 256, "moe_intermediate_size": 128, "num_experts": 8,
                              "num_experts_per_tok": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                              "head_dim": 64}}


def build_model(out: Path, layers: int, shape: dict | None = None) -> Path:
    """Random-init bf16 weights of `shape` (default LLAMA3_8B), built on the GPU (fast init), saved with the
    byte tokenizer. Seeded: calls on machines of one kind build the same weights, so their scores compare."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from core.models.byte_tokenizer import byte_tokenizer

    if (out / "config.json").is_file():
        return out
    fields = dict(shape or LLAMA3_8B)
    config = AutoConfig.for_model(fields.pop("model_type", "llama"), num_hidden_layers=layers, **fields)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    byte_tokenizer().save_pretrained(out)
    return out


def write_calib(work: Path, samples: int, seq_len: int) -> tuple[Path, Path]:
    """Random words (bytes are tokens: 2x the tokens needed) and the exact token ids our job will pick."""
    from core.data.calib import token_blocks
    from core.models.byte_tokenizer import byte_tokenizer

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(2000)]
    text = work / "calib.txt"
    text.write_text(" ".join(rng.choice(words) for _ in range(samples * seq_len // 3)) + "\n")
    ids = token_blocks(str(text), "text", byte_tokenizer(), samples, seq_len, 0)
    np.save(work / "ids.npy", ids)
    return text, work / "ids.npy"


def ours(algo: str, gpus: int, parallel: str, model: Path, calib: Path, work: Path, args) -> dict:
    name = f"ours-{algo}-g{gpus}-{parallel}" + ("-" + "-".join(e.rsplit(".", 1)[-1].replace("=", "") for e in
                                                          args.extra.split()) if args.extra else "")
    cmd = [sys.executable, "-m", "orchestrator", "job=quantize", "model=hf", f"model.path={model}",
           f"quant={algo}", "quant.format=w4g128", f"quant.num_workers={gpus}", f"quant.parallel={parallel}",
           f"quant.batch_size={args.batch_size}", f"quant.export={str(args.export_errors and gpus == 1).lower()}",
           f"quant.cpus_per_worker={args.cpus_per_worker}",
           f"calib.path={calib}", f"calib.num_samples={args.samples}", f"calib.seq_len={args.seq_len}",
           f"job.storage={work}", f"job.name={name}", f"tracking.uri=file://{work}/mlruns",
           "cluster.include_dashboard=false", *args.extra.split()]
    out = run_logged(cmd, work / f"{name}.log")
    summary = dict(re.findall(r"^(\w+): (\S+)$", out, flags=re.M))
    blocks = work / name / "blocks"
    errors = [json.loads((blocks / f"block_{i:03d}" / "metrics.json").read_text())["metrics"]["block_rel_err"]
              for i in range(args.eval_blocks) if (blocks / f"block_{i:03d}" / "metrics.json").is_file()]
    if args.export_errors and gpus == 1:  # read the way the peer's are: from the packed export
        from benchmarks.quant_error import block_errors, blocks_from_export

        errors = block_errors(str(model), np.load(work / "ids.npy"),
                              blocks_from_export(work / name / "export", str(model), args.eval_blocks))
        import torch

        torch.cuda.empty_cache()  # this process's cached blocks would crowd out the runs that follow
    wall = float(summary.get("calib_wall_seconds", "nan"))
    return {"name": name, "algo": algo, "gpus": gpus, "wall": wall, "blocks": int(summary.get("blocks", 0)),
            "peak_gib": float(summary.get("gpu_peak_gib", "nan")), "block_rel_err": errors,
            "load": float(summary.get("load_seconds", "nan"))}


def peer(algo: str, model: Path, ids: Path, work: Path, args) -> dict:
    name = f"peer-{algo}-g1"
    cmd = [sys.executable, "-m", "benchmarks.peer_quant", "--algo", algo, "--model", str(model), "--ids", str(ids),
           "--eval-blocks", str(args.eval_blocks), "--export", str(work / f"{name}-export")]
    # PEER_PYTHONPATH: the peer's own packages first (llm-compressor pins an older compressed-tensors than ours)
    env = {"PYTHONPATH": os.environ["PEER_PYTHONPATH"]} if os.environ.get("PEER_PYTHONPATH") else None
    found = re.search(r"^PEER_RESULT (.*)$", run_logged(cmd, work / f"{name}.log", args.peer_timeout, env),
                      flags=re.M)
    result = json.loads(found.group(1)) if found else {"wall": float("nan"), "blocks": 0, "peak_gib": float("nan"),
                                                       "block_rel_err": []}
    return {"name": name, "gpus": 1, "load": float("nan"), **result, "algo": algo}


def table(rows: list[dict]) -> str:
    lines = ["| run | GPUs | blocks | calib wall s | s/block | peak GPU GiB | block rel. err (first blocks, FP inputs) "
             "| wall vs peer | vs 1 GPU |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per_block = r["wall"] / r["blocks"] if r["blocks"] else float("nan")
        peer_row = next((p for p in rows if p["name"] == f"peer-{r['algo']}-g1"), None)
        one = next((p for p in rows if p["name"] == r["name"].replace(f"-g{r['gpus']}-", "-g1-")), None)
        vs_peer = f"{r['wall'] / peer_row['wall']:.2f}x" if peer_row and r is not peer_row else ""
        vs_one = f"{one['wall'] / r['wall']:.2f}x faster" if one and r["gpus"] > 1 else ""
        errs = ", ".join(f"{e:.2e}" for e in r["block_rel_err"])
        lines.append(f"| {r['name']} | {r['gpus']} | {r['blocks']} | {r['wall']:.1f} | {per_block:.2f} | "
                     f"{r['peak_gib']:.2f} | {errs} | {vs_peer} | {vs_one} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--algos", default="gptq,awq")
    parser.add_argument("--gpus", default="1,2")
    parser.add_argument("--parallel", default="blocks")
    parser.add_argument("--peer", default="gptq,awq", help="algorithms to time llm-compressor on ('' for none)")
    parser.add_argument("--peer-timeout", type=float, default=None, help="seconds for each peer run (then killed)")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-blocks", type=int, default=4)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    parser.add_argument("--cpus-per-worker", type=int, default=4)
    parser.add_argument("--export-errors", action="store_true",
                        help="1-GPU runs export, and their block errors are read from the export, as the peer's")
    add_common_args(parser, "/tmp/bench-quant")
    args = parse_args(parser)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(work / f"{args.shape}-shape-{args.layers}l", args.layers, SHAPES[args.shape])
    calib, ids = write_calib(work, args.samples, args.seq_len)
    rows = []
    for algo in filter(None, args.algos.split(",")):
        if algo in args.peer.split(","):  # first: the GPU all its own (ours measures its export in this process)
            rows.append(peer(algo, model, ids, work, args))
            print(table(rows[-1:]), flush=True)
        for gpus in [int(g) for g in args.gpus.split(",")]:
            rows.append(ours(algo, gpus, args.parallel, model, calib, work, args))
            print(table(rows[-1:]), flush=True)
    record(args.results, f"Quantize, {args.shape} shape ({args.layers} blocks), {args.samples} x {args.seq_len} "
           f"tokens, w4g128, parallel={args.parallel}", table(rows), args.commit)

if __name__ == "__main__":
    main()
