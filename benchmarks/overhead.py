"""What every job pays besides its work: tiny jobs of each kind run end to end by the CLI, embedded (Ray started by
the job) and attached (to a running `ray start --head`), each split into the driver's phases (core/timing.py: its
"timing:" line) and the process's wall time seen from outside ("exit": the interpreter's exit after the line).

    python -m benchmarks.overhead                       # CPU: qwen3_tiny, every kind, both modes
    python -m benchmarks.overhead --size 100m --kinds quantize,evaluate,sensitivity   # GPU: a ~100M Qwen3 shape
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from benchmarks.common import add_common_args, bytecode_cache, parse_args, ray_head, record, run_logged
from core.timing import PHASES, parse_line

# Tiny work, so what is measured is the fixed cost (the demo data and qwen3_tiny: nothing downloaded).
SMALL_CALIB = ["calib.num_samples=8", "calib.seq_len=128"]
KINDS = {
    "quantize": ["job=quantize", *SMALL_CALIB],
    "evaluate": ["job=evaluate", "eval.num_samples=8", "eval.seq_len=128"],
    "sensitivity": ["job=sensitivity", *SMALL_CALIB, "search.effective_bits=6"],
    "inspect": ["job=inspect"],
    "sft": ["job=sft", "trainer.max_steps=2", "data.max_length=256", "data.pack_max_length=256",
            "trainer.num_workers=2", "trainer.checkpoint.export=false"],
}
# --size 100m: a ~94M Qwen3 shape (8 blocks) saved once as a bf16 model directory (model=hf), 128 x 512
# calibration tokens: the size of issue #21's measurement
SIZES = {"tiny": None, "100m": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8,
                                "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 64}}
BIG_CALIB = ["calib.num_samples=128", "calib.seq_len=512"]

def model_dir(size: str, work: Path) -> list[str]:
    """The model overrides of --size: none for tiny (qwen3_tiny built from its config in every process), else a
    bf16 directory saved once (weights read from safetensors, as users' models are)."""
    if SIZES[size] is None:
        return []
    out = work / f"model-{size}"
    if not (out / "config.json").is_file():
        import torch

        from core.models import MODELS, ModelConfig, build_model

        cfg = ModelConfig(name="qwen3_tiny", overrides=SIZES[size])
        build_model(cfg, torch.bfloat16).save_pretrained(out)
        MODELS.get("qwen3_tiny").tokenizer(cfg).save_pretrained(out)
    return ["model=hf", f"model.path={out}"]


def run_one(kind: str, mode: str, address: str | None, args: argparse.Namespace, work: Path) -> dict | None:
    storage = work / "runs"  # one MLflow store for all runs, as a user's (its creation: the first run's)
    extra = model_dir(args.size, work) + (BIG_CALIB if args.size != "tiny" and kind in ("quantize", "sensitivity")
                                          else [])
    cmd = [sys.executable, "-m", "orchestrator", *KINDS[kind], *extra, f"job.storage={storage}",
           f"job.name={kind}-{mode}-{time.time_ns()}", "cluster.include_dashboard=false",
           *([f"cluster.address={address}"] if address else []),
           *args.extra.split()]
    began = time.perf_counter()
    output = run_logged(cmd, work / f"{kind}-{mode}.log", timeout=600)
    wall = time.perf_counter() - began
    phases = parse_line(output)  # the driver's phases (None: the run failed)
    if phases is None:
        return None
    return {"kind": kind, "mode": mode, "wall": wall, **phases, "exit": max(0.0, wall - phases["total"])}


def table(rows: list[dict]) -> str:
    shown = [p for p in (*PHASES, "exit") if any(r[p] >= 0.05 for r in rows)]
    lines = ["| job | mode | wall s | " + " | ".join(shown) + " |", "|---|---|---:|" + "---:|" * len(shown)]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['mode']} | {r['wall']:.1f} | " + " | ".join(f"{r[p]:.1f}" for p in shown)
                     + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default="quantize,evaluate,sensitivity,inspect,sft")
    parser.add_argument("--modes", default="embedded,attached")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (kind, mode); all are rows")
    parser.add_argument("--title", default="Fixed cost per job (make bench-overhead)")
    parser.add_argument("--bytecode-cache", default="", help="see benchmarks/common.py bytecode_cache")
    add_common_args(parser, work="/tmp/bench-overhead", deadline=None)
    args = parse_args(parser)
    bytecode_cache(args.bytecode_cache)
    work = Path(args.work)
    shutil.rmtree(work / "runs", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    run_one("inspect", "untimed", None, args, work)  # creates the MLflow store the timed runs share
    rows = []
    for mode in args.modes.split(","):
        with ray_head(work) if mode == "attached" else nullcontext(None) as address:
            for kind in args.kinds.split(","):
                for _ in range(args.repeat):
                    row = run_one(kind, mode, address, args, work)
                    if row is not None:
                        rows.append(row)
                        print(f"{kind} {mode}: {row['wall']:.1f} s", flush=True)
    record(args.results, f"{args.title}, size {args.size}", table(rows), args.commit)


if __name__ == "__main__":
    main()
