"""`make bench-vlm`: a LLaVA-1.5-7B-shaped VLM (model=llava15_7b: CLIP ViT-L/14-336 tower, 2-layer MLP
projector, Llama-2-7B language model; random init, bf16) through the orchestrator on the GPU machine:

- SFT on the shipped shape images (data=mm_demo, each image 576 tokens at 336 px) with the vision tower
  trainable and frozen (model.freeze=[vision]): tokens/s/GPU, MFU and peak memory from the per-step lines.
  MFU counts 6 N per token over every parameter (text and image tokens alike): with the tower frozen its
  weight gradients are skipped, so MFU there over-counts by at most the tower's share (4% of N).
- MBQ w3g128 calibration (job=quantize quant=mbq calib=image_caption) on each GPU count of --mbq-gpus: the
  gradient pass and the block loop's wall time, peak memory, from the driver's log.

    python -m benchmarks.vlm --gpus 2 --steps 10 --mbq-gpus 1,2
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from benchmarks.common import add_common_args, parse_args, record, run_logged
from benchmarks.sft import _row
from benchmarks.steplines import parse_steps

BASE = ["model=llava15_7b", "data=mm_demo", "cluster.include_dashboard=false", "trainer.max_failures=0"]


def sft(gpus: int, freeze: str, args: argparse.Namespace, work: Path) -> dict:
    name = f"sft-g{gpus}-{'frozen-' + freeze if freeze else 'all-trainable'}"
    cmd = [sys.executable, "-m", "orchestrator", "job=sft", *BASE, f"model.freeze=[{freeze}]",
           f"data.max_length={args.seq}", f"data.pack_max_length={args.seq}", f"trainer.num_workers={gpus}",
           f"trainer.micro_batch_size={args.mbs}", f"trainer.max_steps={args.steps}",
           "trainer.activation_checkpointing=true", "trainer.checkpoint.export=false", "trainer.optim.lr=1e-5",
           f"job.storage={work}", f"job.name={name}", f"tracking.uri=file://{work}/mlruns", *args.extra.split()]
    row = _row(name, gpus, args.mbs, True, "sdpa", parse_steps(run_logged(cmd, work / f"{name}.log")), "max_alloc")
    return {**row, "kind": "sft", "freeze": freeze or "none"}


def model_dir(work: Path, overrides: dict) -> Path:
    """llava15_7b saved once as a model directory with its processor (random init built on the GPU: fast), so
    the calibration workers load weights instead of each random-initialising 7B parameters on the CPU."""
    import torch

    from core.models import MODELS, ModelConfig

    out = work / "llava15_7b"
    if (out / "config.json").is_file():
        return out
    source, cfg = MODELS.get("llava15_7b"), ModelConfig(name="llava15_7b", overrides=overrides)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = source.build(cfg, source.hf_config(cfg), torch.bfloat16)
    model.save_pretrained(out)
    source.processor(cfg).save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def mbq(gpus: int, model: Path, args: argparse.Namespace, work: Path) -> dict:
    name = f"mbq-w3g128-g{gpus}"
    cmd = [sys.executable, "-m", "orchestrator", "job=quantize", "model=hf", f"model.path={model}", "quant=mbq",
           "quant.bits=3", "quant.group_size=128", "calib=image_caption", f"calib.num_samples={args.mbq_samples}",
           "calib.seq_len=1024", f"quant.num_workers={gpus}", "quant.parallel=blocks", "quant.export=false",
           "cluster.include_dashboard=false",
           f"job.storage={work}", f"job.name={name}", f"tracking.uri=file://{work}/mlruns", *args.extra.split()]
    out = run_logged(cmd, work / f"{name}.log")
    found = {key: float(m.group(1)) for key in ("calib_wall_seconds", "gpu_peak_gib", "load_seconds")
             if (m := re.search(rf"^{key}: ([\d.]+)$", out, re.MULTILINE))}
    grad = re.search(r"mbq: gradient pass ([\d.]+)s", out)  # before the block loop, not in calib_wall_seconds
    return {"kind": "mbq", "name": name, "gpus": gpus, "grad_seconds": float(grad.group(1)) if grad else float("nan"),
            **found}


def table(rows: list[dict]) -> str:
    lines = ["| run | GPUs | vision tower | tokens/s/GPU | MFU | peak mem GiB | MBQ load s | MBQ gradient pass s | "
             "calib wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "sft":
            lines.append(f"| {r['name']} | {r['gpus']} | {'frozen' if r['freeze'] != 'none' else 'trainable'} | "
                         f"{r['tgs']:.0f} | {100 * r['mfu']:.1f}% | {r['mem']:.1f} | | | |")
        else:
            lines.append(f"| {r['name']} | {r['gpus']} | FP (not quantized) | | | "
                         f"{r.get('gpu_peak_gib', float('nan')):.1f} | {r.get('load_seconds', float('nan')):.1f} | "
                         f"{r['grad_seconds']:.1f} | "
                         f"{r.get('calib_wall_seconds', float('nan')):.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", default="2", help="SFT worker counts")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--mbs", type=int, default=1)
    parser.add_argument("--freeze", default=",vision", help="SFT variants: model.freeze lists, comma-separated")
    parser.add_argument("--mbq-gpus", default="1,2", help="'' to skip MBQ")
    parser.add_argument("--mbq-samples", type=int, default=128)
    parser.add_argument("--mbq-overrides", default="{}", help="model.overrides of the MBQ model (JSON; CPU checks)")
    add_common_args(parser, "/tmp/bench-vlm")
    args = parse_args(parser)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for gpus in [int(g) for g in args.gpus.split(",") if g]:
        for freeze in args.freeze.split(","):
            rows.append(sft(gpus, freeze, args, work))
            print(table(rows[-1:]), flush=True)
    mbq_gpus = [int(g) for g in args.mbq_gpus.split(",") if g]
    model = model_dir(work, json.loads(args.mbq_overrides)) if mbq_gpus else None
    for gpus in mbq_gpus:
        rows.append(mbq(gpus, model, args, work))
        print(table(rows[-1:]), flush=True)
    record(args.results, f"VLM, LLaVA-1.5-7B shape, SFT seq {args.seq} ZeRO-3 bf16 and MBQ w3g128", table(rows),
           args.commit)


if __name__ == "__main__":
    main()
