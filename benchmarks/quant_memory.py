"""`python -m benchmarks.quant_memory`: where a quantize worker's peak GPU memory goes, for one algorithm on one
model shape. Runs the job's own calibration worker in this process (no Ray) over --layers blocks with the CUDA
caching allocator's history on, then prints the peak and the allocations live at that moment, grouped by the
innermost frame of this project that made them (file:line, function), largest first. A diagnosis tool beside
benchmarks/quant.py (which measures the whole job side by side with the peer); it needs a GPU.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def live_at_peak(snapshot: dict) -> tuple[int, list[tuple[int, str]]]:
    """Replay the allocator's trace: the peak of allocated bytes, and the live (size, frame) pairs there."""
    live: dict[int, tuple[int, str]] = {}
    total = peak = 0
    at_peak: list[tuple[int, str]] = []
    for device_trace in snapshot["device_traces"]:
        for event in device_trace:
            if event["action"] == "alloc":
                live[event["addr"]] = (event["size"], _frame(event.get("frames", [])))
                total += event["size"]
                if total > peak:
                    peak, at_peak = total, list(live.values())
            elif event["action"] in ("free_requested",) and event["addr"] in live:
                total -= live.pop(event["addr"])[0]
    return peak, at_peak


def _frame(frames: list[dict]) -> str:
    for f in frames:
        name = f.get("filename", "")
        if name.startswith(str(ROOT)) and "benchmarks/quant_memory" not in name:
            return f"{Path(name).relative_to(ROOT)}:{f['line']} {f['name']}"
    return "(outside the project)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="qwen3-30b-a3b")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--algo", default="awq")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", default="/tmp/bench-quant-memory")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    import torch

    from benchmarks.quant import SHAPES, build_model, write_calib
    from core.data.calib_mm import model_calibration_rows
    from core.models import MODELS
    from jobs.quantize.driver import QuantizeJob
    from jobs.quantize.worker import CalibWorker
    from orchestrator.compose import compose, to_spec

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(work / f"{args.shape}-{args.layers}l", args.layers, SHAPES[args.shape])
    text, _ = write_calib(work, args.samples, args.seq_len)
    torch.cuda.empty_cache()
    storage = Path(tempfile.mkdtemp(dir=work))
    spec = to_spec(compose(["job=quantize", "model=hf", f"model.path={model}", f"quant={args.algo}",
                            "quant.format=w4g128", "quant.parallel=blocks", f"quant.batch_size={args.batch_size}",
                            f"calib.path={text}", f"calib.num_samples={args.samples}",
                            f"calib.seq_len={args.seq_len}", "tracking.enabled=false", f"job.storage={storage}"]))
    from core.tracking import RunHandle
    from jobs.base import RunContext

    ctx = RunContext(RunHandle("", ""), storage / "job", str(storage / "job"))
    prepared = QuantizeJob().prepare(spec, ctx)
    rows = model_calibration_rows(spec.calib, MODELS.get("hf"), spec.model)
    worker = CalibWorker(spec, 0, True, "bfloat16")
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=2_000_000)
    root = str(storage / "blocks")
    worker.start(rows.batches(spec.quant.batch_size), prepared.formats, root)
    for i in range(args.layers):  # what stays allocated between blocks must not grow with the block index
        seconds = worker.calibrate(i, root)["block_seconds"]
        print(f"block {i}: {seconds:.1f} s, allocated after it {torch.cuda.memory_allocated() / 2**30:.2f} GiB, "
              f"peak so far {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)
    worker.flush()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    peak, at_peak = live_at_peak(snapshot)
    print(f"max_memory_allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB; replayed peak "
          f"{peak / 2**30:.2f} GiB; live there, by the project frame that allocated it:")
    by_frame = collections.Counter()
    for size, frame in at_peak:
        by_frame[frame] += size
    for frame, size in by_frame.most_common(args.top):
        print(f"{size / 2**20:10.1f} MiB  {frame}")


if __name__ == "__main__":
    main()
