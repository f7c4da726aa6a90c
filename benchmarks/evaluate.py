"""`python -m benchmarks.evaluate`: job=evaluate's speed on one GPU. Issue 25's target: perplexity of the
Llama-3-8B shape (32 blocks, random init) over 256 x 2048 tokens at >= 20,000 tokens/s in the eval phase; and the
same tokens scored against a reference in one job (eval.compare_to: both models in each worker, per-token KL and
top-1 agreement).

The model: benchmarks/quant.py's random-init bf16 builder (--layers cuts the depth; --shape tiny for a CPU check);
the held-out text: random words whose byte tokens the job cuts into --samples x --seq-len windows (the exact ids
are written to --work/ids.npy). Rows, each one `python -m orchestrator job=evaluate` process:
- perplexity: the model alone;
- compare: its RTN w4g128 export (made first by a job=quantize run, reused when it exists; --candidate fp: the
  model itself) against the model as eval.compare_to.
From each job's summary lines: eval_seconds (the workers' scoring, the slowest worker's, model load excluded),
eval_tokens_per_second (held-out tokens / eval_seconds; with compare_to every token goes through both models),
eval_load_seconds (the slowest worker's model load) and gpu_peak_gib (models included).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from benchmarks.common import add_common_args, bytecode_cache, parse_args, record, run_logged
from benchmarks.quant import build_model, write_calib
from benchmarks.sensitivity import SHAPES

TARGET = 20_000  # tokens/s, perplexity of the 8B shape on one GPU (issue 25)
SUMMARY = re.compile(r"^([\w.]+): (\S+)$", flags=re.M)
NAN = float("nan")


def _job(args, work: Path, name: str) -> list[str]:
    """What every run of ours shares: storage, tracking, cluster and the extra overrides."""
    return [f"job.storage={work}", f"job.name={name}", f"tracking.uri=file://{work}/mlruns",
            "cluster.include_dashboard=false", *([f"cluster.address={args.address}"] if args.address else []),
            *args.extra.split()]


def quantized(model: Path, text: Path, work: Path, args) -> Path | None:
    """The model's RTN w4g128 export (a job=quantize run; an earlier run's export is reused)."""
    export = work / "rtn-w4g128" / "export"
    if not (export / "COMPLETE").is_file():
        run_logged([sys.executable, "-m", "orchestrator", "job=quantize", "model=hf", f"model.path={model}",
                    "quant=rtn", "quant.format=w4g128", f"calib.path={text}", "calib.num_samples=8",
                    f"calib.seq_len={min(args.seq_len, 512)}", f"quant.cpus_per_worker={args.cpus_per_worker}",
                    *_job(args, work, "rtn-w4g128")], work / "rtn-w4g128.log")
    return export if (export / "COMPLETE").is_file() else None


def ours(kind: str, batch: int, model: Path, reference: Path | None, text: Path, work: Path, args) -> dict:
    name = f"{kind}-b{batch}-w{args.workers}"
    cmd = [sys.executable, "-m", "orchestrator", "job=evaluate", "model=hf", f"model.path={model}",
           f"eval.path={text}", f"eval.num_samples={args.samples}", f"eval.seq_len={args.seq_len}",
           f"eval.batch_size={batch}", f"eval.num_workers={args.workers}",
           f"eval.cpus_per_worker={args.cpus_per_worker}", f"eval.threads={args.cpus_per_worker}",
           *([f"eval.compare_to={reference}"] if reference else []),
           *_job(args, work, name)]
    return row(name, kind, batch, args.workers, run_logged(cmd, work / f"{name}.log"))


def row(name: str, kind: str, batch: int, workers: int, out: str) -> dict:
    """A table row from a job's output (its summary lines; NaN where the job did not get there)."""
    summary = dict(SUMMARY.findall(out))

    def value(key: str) -> float:
        return float(summary.get(key, NAN))

    timed_out = re.search(r"TIMED OUT after \d+ s", out)
    note = "" if "eval_seconds" in summary else (timed_out.group(0) if timed_out else "FAILED")
    return {"name": name, "kind": kind, "batch": batch, "workers": workers, "note": note,
            **{key: value(key) for key in ("eval_seconds", "eval_tokens_per_second", "eval_load_seconds",
                                           "gpu_peak_gib", "perplexity", "compare_to.perplexity", "kl_mean",
                                           "kl_p99", "top1_agreement")}}


def _cell(value: float, spec: str) -> str:
    return "-" if value != value else format(value, spec)  # NaN: not measured (no compare_to, CPU, failed)


def table(rows: list[dict]) -> str:
    """A line per run; `vs target`: perplexity rows of the target's shape (the 8B's 32 blocks, row["target"])."""
    columns = [("eval s", "eval_seconds", ".1f"), ("tokens/s", "eval_tokens_per_second", ",.0f"),
               ("load s", "eval_load_seconds", ".1f"), ("peak GPU GiB", "gpu_peak_gib", ".1f"),
               ("perplexity", "perplexity", ".2f"), ("ref. perplexity", "compare_to.perplexity", ".2f"),
               ("KL mean", "kl_mean", ".3g"), ("KL p99", "kl_p99", ".3g"), ("top-1 agree", "top1_agreement", ".4f")]
    lines = ["| run | workers | batch | vs target | " + " | ".join(h for h, _, _ in columns) + " | note |",
             "|---" * (len(columns) + 5) + "|"]
    for r in rows:
        tps = r["eval_tokens_per_second"]
        vs = f"{tps / TARGET:.2f}x" if r.get("target") and r["kind"] == "perplexity" and tps == tps else ""
        cells = " | ".join(_cell(r[key], spec) for _, key, spec in columns)
        lines.append(f"| {r['name']} | {r['workers']} | {r['batch']} | {vs} | {cells} | {r['note']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", default="8", help="eval.batch_size (a list: a run each)")
    parser.add_argument("--workers", type=int, default=1, help="eval.num_workers (one GPU each)")
    parser.add_argument("--rows", default="perplexity,compare")
    parser.add_argument("--candidate", choices=("rtn", "fp"), default="rtn",
                        help="compare row's model: the RTN w4g128 export, or the FP model itself")
    parser.add_argument("--cpus-per-worker", type=int, default=None,
                        help="eval.cpus_per_worker and eval.threads (default: 4 with a GPU, else 1)")
    parser.add_argument("--address", default=None, help="attach every job to this running Ray cluster")
    parser.add_argument("--pycache", default="/tmp/bench-pycache", help="one bytecode cache for every process")
    add_common_args(parser, "/tmp/bench-evaluate")
    args = parse_args(parser)
    kinds = [k for k in args.rows.split(",") if k]
    if not kinds or not set(kinds) <= {"perplexity", "compare"}:
        parser.error(f"--rows: perplexity and/or compare, comma-separated (got {args.rows!r})")
    bytecode_cache(args.pycache)
    import torch

    if args.cpus_per_worker is None:
        args.cpus_per_worker = 4 if torch.cuda.is_available() else 1
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(work / f"{args.shape}-{args.layers}l", args.layers, SHAPES[args.shape])
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the builder's weights, still cached by this process, would crowd the jobs' GPU
    text, _ = write_calib(work, args.samples, args.seq_len)
    candidate = (quantized(model, text, work, args) if args.candidate == "rtn" else model) if "compare" in kinds \
        else None
    rows, target = [], args.shape == "llama3-8b" and args.layers == 32
    for batch in [int(b) for b in args.batch_size.split(",")]:
        for kind in kinds:
            if kind == "compare" and candidate is None:
                failed = row(f"compare-b{batch}-w{args.workers}", kind, batch, args.workers, "")
                rows.append({**failed, "note": "no RTN export (see rtn-w4g128.log)"})
            else:
                rows.append({**ours(kind, batch, candidate if kind == "compare" else model,
                                    model if kind == "compare" else None, text, work, args), "target": target})
            print(table(rows[-1:]), flush=True)
    record(args.results, f"Evaluate, {args.shape} shape ({args.layers} blocks), {args.samples} x {args.seq_len} "
           f"tokens, compare: {args.candidate} vs FP", table(rows), args.commit)


if __name__ == "__main__":
    main()
