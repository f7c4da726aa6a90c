"""`make bench-sensitivity`: a sensitivity scan (gradient scores + mixed-precision search) by the orchestrator
vs NVIDIA ModelOpt's `auto_quantize`, side by side on one model directory and one set of token ids.

The Llama-3-8B shape (random init, bf16; --layers cuts the depth; --shape tiny for a CPU check) saved by
benchmarks/quant.py's builder, 128 x 512 calibration tokens. Ours: `python -m orchestrator job=sensitivity
model=hf ...` with candidates w4g128, w8a8, fp16 and q/k/v, gate/up sharing a format (the peer's
grouping), on each GPU count of --gpus; the peer: benchmarks/peer_autoquant.py (INT4_AWQ_CFG,
INT8_DEFAULT_CFG and its implicit no-quant, lm_head disabled, batches of 8 for calibration and scoring).

Budget: --block-bits (default 6.0, between all-w4g128's 4.125 and fp16's 16) is ours, over the block
Linears. The peer's effective bits also count the disabled lm_head at 16 bits (its 4-block minimum
is 8.51), so it gets the same block-average budget with lm_head added: (block_bits x N_blocks +
16 x N_lm_head) / (N_blocks + N_lm_head). (Its cost leaves out scales: int4 costs 4.0 there, 4.125 here.)

Timing: ours "total" is the orchestrator process from start to exit (Python, Ray, MLflow, loading the
model onto the GPU, scoring, search, report); "load" the task's model load; "scoring" the task's
forward/backward scoring (slowest task). The peer's "total" is its process, "load" from_pretrained onto
the GPU, "scoring" the auto_quantize call (its calibration, scoring and LP search). Peak GPU memory: each
task's torch.cuda.max_memory_allocated, model included. --passes (default 2) runs everything again: the first pass on
a fresh machine pays one-time costs (ModelOpt JIT-builds its CUDA extension inside its scoring, about a minute;
both read CUDA libraries from disk), the second is what a machine that ran a job before sees; each row's ratio is
against the peer of its own pass. Bytecode: --pycache gives every process of both sides one bytecode cache, so
the second pass imports as a pip-installed environment does (benchmarks/common.py bytecode_cache: the lent GPU
image compiles torch's Python in every process otherwise); the first pass compiles what the builder did not
import (Ray, MLflow, ModelOpt...). Each finished row is printed with the table
so far and appended to --work/rows.jsonl; --deadline bounds the whole call (the last run gets what
is left and is killed past it) so the table is recorded before a time limit outside ends the call.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from contextlib import nullcontext
from importlib.util import find_spec
from pathlib import Path

from benchmarks.common import add_common_args, bytecode_cache, parse_args, ray_head, record, run_logged
from benchmarks.quant import LLAMA3_8B, build_model, write_calib

SHAPES = {"llama3-8b": LLAMA3_8B,
          "tiny": {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "vocab_size": 512, "max_position_embeddings": 1024, "rope_theta": 500000.0,
                   "tie_word_embeddings": False}}
CANDIDATES = "[w4g128,w8a8,fp16]"


def budgets(shape: dict, layers: int, block_bits: float) -> tuple[float, float]:
    """(ours over block Linears, the peer's over block Linears + lm_head at 16 bits), same block average."""
    h, f = shape["hidden_size"], shape["intermediate_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    blocks = layers * (2 * h * h + 2 * h * kv + 3 * h * f)
    head = h * shape["vocab_size"]
    return block_bits, (block_bits * blocks + 16 * head) / (blocks + head)


def _choices(report: Path) -> dict:
    return json.loads((report / "report.json").read_text()) if (report / "report.json").is_file() else {}


def ours(gpus: int, batch: int, model: Path, calib: Path, work: Path, budget: float, args,
         address: str | None = None, suffix: str = "") -> dict:
    """One run of ours: an embedded Ray cluster, or attached to the head at `address` (name suffix -att)."""
    import torch

    name = f"ours-g{gpus}-{args.layers}l-b{batch}{'-att' if address else ''}{suffix}"
    gpu = torch.cuda.is_available()
    cmd = [sys.executable, "-m", "orchestrator", "job=sensitivity", "model=hf", f"model.path={model}",
           f"calib.path={calib}", f"calib.num_samples={args.samples}", f"calib.seq_len={args.seq_len}",
           f"search.candidates={CANDIDATES}", f"search.effective_bits={budget}", "search.handles=shared_input",
           f"search.num_workers={gpus}", f"search.use_gpu={str(gpu).lower()}", f"search.batch_size={batch}",
           f"search.cpus_per_worker={4 if gpu else 1}", f"job.storage={work}", f"job.name={name}",
           f"tracking.uri=file://{work}/mlruns", "cluster.include_dashboard=false",
           *([f"cluster.address={address}"] if address else []), *args.extra.split()]
    began = time.perf_counter()
    out = run_logged(cmd, work / f"{name}.log")
    total = time.perf_counter() - began
    summary = dict(re.findall(r"^(\w+): (.*)$", out, flags=re.M))
    logged = re.search(r"scoring: \d+ worker\(s\) in \S+ s \(slowest: load (\S+) s, score (\S+) s[^)]*\)"
                       r"(?:, GPU peak (\S+) GiB)?", out)
    if logged and "load_seconds" not in summary:  # failed after scoring (search, report): the driver's log line
        summary.update(load_seconds=logged.group(1), score_seconds=logged.group(2),
                       gpu_peak_gib_per_worker=f"max {logged.group(3)}" if logged.group(3) else "")
    manifest = _choices(work / name / "report")
    chosen: dict[str, int] = {}
    for fmt in manifest.get("choices", {}).values():
        chosen[fmt] = chosen.get(fmt, 0) + 1
    seconds = {key: float(summary.get(f"{field}_seconds", "nan"))
               for key, field in (("start", "start"), ("load", "load"), ("weights", "weights"), ("scoring", "score"))}
    return {"name": name, "gpus": gpus, "total": total if "effective_bits" in summary else float("nan"), **seconds,
            "peaks": summary.get("gpu_peak_gib_per_worker", ""), "effective_bits": float(summary.get(
                "effective_bits", "nan")), "budget": budget, "chosen": chosen, "scores": _scores(manifest),
            "note": "" if "effective_bits" in summary else _failure(out)}


def _failure(out: str) -> str:
    timed_out = re.search(r"TIMED OUT after \d+ s", out)
    return timed_out.group(0) if timed_out else "FAILED"


def _scores(manifest: dict) -> dict:
    return {(h["name"], f): c["score"] for h in manifest.get("handles", []) for f, c in h["candidates"].items()}


def peer(model: Path, ids: Path, work: Path, budget: float, args, suffix: str = "") -> dict:
    row = {"name": f"peer-modelopt-{args.layers}l{suffix}", "gpus": 1, "budget": budget}
    if find_spec("modelopt") is None:
        return {**row, "note": "skipped: modelopt is not importable here (no module named 'modelopt')"}
    cmd = [sys.executable, "-m", "benchmarks.peer_autoquant", "--model", str(model), "--ids", str(ids),
           "--batch-size", str(args.peer_batch_size), "--effective-bits", f"{budget:.6f}"]
    began = time.perf_counter()
    out = run_logged(cmd, work / f"{row['name']}.log")
    total = time.perf_counter() - began
    found = re.search(r"^PEER_RESULT (.*)$", out, flags=re.M)
    if found is None:
        progress = re.findall(r"(Estimating auto_quantize scores[^\r\n]*|Calibrating[^\r\n]*)", out)
        last = (progress or out.strip().splitlines() or [""])[-1].strip().replace("|", "/")
        return {**row, "note": f"{_failure(out)}, last progress: {last}"}
    result = json.loads(found.group(1))
    if "skipped" in result:
        return {**row, "note": f"skipped: {result['skipped']}"}
    # ModelOpt JIT-builds its CUDA extension at first use on a machine (cached after: torch_extensions)
    built = re.search(r"Loaded extension (\S+) in ([\d.]+) seconds", out)
    notes = [f"{built.group(1)} built in {float(built.group(2)):.1f} s (inside scoring)"] if built and float(
        built.group(2)) > 5 else []
    return {**row, "total": total, "load": result["load"], "scoring": result["wall"],
            "peaks": f"{result['peak_gib']:.2f}", "effective_bits": result["effective_bits"],
            "chosen": result["chosen"], "note": "; ".join(notes + ([] if result["satisfied"] else
                                                                   ["budget not satisfied"]))}


def _agreement(row: dict, rows: list[dict]) -> str:
    """Max relative score difference and share of equal choices vs the 1-GPU run of the same depth."""
    one = next((r for r in rows if r["name"] == row["name"].replace(f"-g{row['gpus']}-", "-g1-")), None)
    if one is None or one is row or not one.get("scores") or not row.get("scores"):
        return ""
    diff = max(abs(row["scores"][k] - v) / max(abs(v), 1e-30) for k, v in one["scores"].items() if v)
    return f"max rel. diff {diff:.1e}"


def table(rows: list[dict]) -> str:
    lines = ["| run | GPUs | total s | worker start s | load s (weights) | scoring s | peak GPU GiB per worker "
             "| effective bits (budget) | formats chosen | total vs peer | scoring vs peer | scores vs 1 GPU | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        nan = float("nan")
        peer_row = next((p for p in rows if p["name"].startswith("peer") and "total" in p
                         and p.get("pass") == r.get("pass")), None)  # the peer of the same pass
        vs = [f"{r.get(k, nan) / peer_row[k]:.2f}x" if peer_row and r is not peer_row and k in r else ""
              for k in ("total", "scoring")]
        chosen = ", ".join(f"{k}: {v}" for k, v in sorted(r.get("chosen", {}).items()))
        lines.append(f"| {r['name']} | {r['gpus']} | {r.get('total', nan):.1f} | {r.get('start', nan):.1f} | "
                     f"{r.get('load', nan):.1f} ({r.get('weights', nan):.1f}) | "
                     f"{r.get('scoring', nan):.1f} | {r.get('peaks', '')} | {r.get('effective_bits', nan):.3f} "
                     f"({r['budget']:.3f}) | {chosen} | {vs[0]} | {vs[1]} | {_agreement(r, rows)} | "
                     f"{r.get('note', '')} |")
    return "\n".join(lines)


def _release_gpu() -> None:
    """The builder's weights are freed but stay cached by this process's allocator: hand them back."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    parser.add_argument("--gpus", default="1,2", help="worker counts for ours ('' for none)")
    parser.add_argument("--peer", default="modelopt", help="'' to skip the peer")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", default="64",  # fastest measured, 35 GiB for 8B (RESULTS.md)
                        help="ours: samples per forward/backward (a list: a run each)")
    parser.add_argument("--peer-batch-size", type=int, default=8)
    parser.add_argument("--cluster", default="embedded",
                        help="ours on: embedded (Ray started by the job), attached (to a `ray start --head` "
                             "started once before, as `ray job submit` users run), or both: embedded,attached")
    parser.add_argument("--block-bits", type=float, default=6.0)
    parser.add_argument("--passes", type=int, default=2,
                        help="every run this many times: the first pass on a fresh machine pays one-time costs "
                             "(the peer's CUDA extension build, CUDA libraries read from disk), later ones not")
    parser.add_argument("--pycache", default="/tmp/bench-pycache",
                        help="one bytecode cache for both sides' processes ('' for the environment's own setting)")
    add_common_args(parser, "/tmp/bench-sensitivity", deadline=540.0)
    args = parse_args(parser)
    bytecode_cache(args.pycache)  # before the model builder's imports: it compiles torch's once for all
    modes = args.cluster.split(",")
    if not set(modes) <= {"embedded", "attached"}:
        parser.error(f"--cluster: embedded and/or attached, comma-separated (got {args.cluster!r})")
    started = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    shape = SHAPES[args.shape]
    model = build_model(work / f"{args.shape}-{args.layers}l", args.layers, shape)
    _release_gpu()
    import matplotlib.font_manager  # noqa: F401  the font cache, as the project's image ships it (docker/Dockerfile)
    calib, ids = write_calib(work, args.samples, args.seq_len)
    ours_budget, peer_budget = budgets(shape, args.layers, args.block_bits)
    print(f"model ready in {time.perf_counter() - started:.0f} s; budgets: ours {ours_budget}, peer "
          f"{peer_budget:.4f}", flush=True)
    configs = [(int(g), int(b)) for g in args.gpus.split(",") if g for b in args.batch_size.split(",")]
    rows: list[dict] = []

    def add(row: dict) -> None:
        rows.append(row)
        with open(work / "rows.jsonl", "a") as fh:
            fh.write(json.dumps({k: v for k, v in row.items() if k != "scores"}) + "\n")
        print(table(rows), flush=True)

    for n in range(1, args.passes + 1):
        suffix = "" if args.passes == 1 else f"-p{n}"
        for mode in modes:
            with ray_head(work) if mode == "attached" else nullcontext() as address:
                for g, b in configs:
                    add({**ours(g, b, model, calib, work, ours_budget, args, address, suffix), "pass": n})
        if args.peer:
            add({**peer(model, ids, work, peer_budget, args, suffix), "pass": n})
    record(args.results, f"Sensitivity scan, {args.shape} shape ({args.layers} blocks), {args.samples} x "
           f"{args.seq_len} tokens, candidates {CANDIDATES}", table(rows), args.commit)


if __name__ == "__main__":
    main()
