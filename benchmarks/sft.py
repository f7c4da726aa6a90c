"""`make bench-sft`: SFT throughput of the orchestrator vs the plain Ray Train + DeepSpeed peer.

Qwen3-1.7B shape (random init, bf16), 4096-token rows, ZeRO-3, on 1 and 2 GPUs. Ours runs as
`python -m orchestrator job=sft ...` (packed synthetic chat data); the peer is benchmarks/peer_sft.py.
Prints a table and writes its rows (device, date, commit) to --results (appended).
"""

from __future__ import annotations

import argparse
import sys
import zlib
from pathlib import Path

from benchmarks.common import add_common_args, bytecode_cache, parse_args, record, run_logged
from benchmarks.steplines import parse_steps, steady
from benchmarks.synthetic import write_chat_jsonl

SEQ = 4096
# in every run of ours (named in the results' title): the settings measured fastest (benchmarks/RESULTS.md): every
# bf16 parameter resident (3.4 GB for 1.7B) instead of gathered per layer, the loss without whole logits (micro-batch
# 6 peaked at 80.5 GiB with it), each decoder layer compiled (with ZeRO-3's hooks per block, the default)
FAST = ["trainer.zero.param_persistence_threshold=10000000000", "trainer.loss_chunk_tokens=4096",
        "trainer.compile=blocks"]


def ours(gpus: int, mbs: int, ckpt: bool, attn: str, steps: int, data: Path, work: Path, extra: list[str],
         seq: int = SEQ) -> dict:
    tag = f"-x{zlib.crc32(' '.join(extra).encode()):08x}" if extra else ""  # a Hydra-safe name per override set
    name = f"ours-g{gpus}-mb{mbs}-ac{int(ckpt)}-{attn}{f'-s{seq}' if seq != SEQ else ''}{tag}"
    cmd = [sys.executable, "-m", "orchestrator", "job=sft", "model=qwen3_1p7b", f"model.attn_implementation={attn}",
           f"data.datasets=[{{path: {data}}}]", f"data.max_length={seq}", f"data.pack_max_length={seq}",
           f"trainer.num_workers={gpus}", f"trainer.micro_batch_size={mbs}", f"trainer.max_steps={steps}",
           f"trainer.activation_checkpointing={str(ckpt).lower()}", "trainer.checkpoint.export=false",
           "trainer.checkpoint.save=false", *FAST, "trainer.optim.lr=1e-4", "trainer.max_failures=0",
           f"job.storage={work}", f"job.name={name}", f"tracking.uri=file://{work}/mlruns",
           "cluster.include_dashboard=false", *extra]  # the GPU image's slim Ray has no dashboard deps
    output = run_logged(cmd, work / f"{name}.log")
    job_dir = work / name
    job_log = job_dir / "logs" / "job.log"  # the workers' per-step lines (the console has the progress bar)
    steps_seen = parse_steps(output + (job_log.read_text(errors="replace") if job_log.exists() else ""))
    return {**_row(name, gpus, mbs, ckpt, attn, steps_seen, "max_alloc"), "seq": seq,
            "extra": " ".join(extra)}


def ours_spec(spec: str) -> tuple[int, bool, str, int, list[str]]:
    """`mbs:ckpt:attn[:override...]`: a row of ours; `seq=N` sets its packed row length, anything else is a Hydra
    override of that row alone (e.g. `6:0:flex_attention:trainer.precision=fp8`; a value with ':' or ',' does not
    fit this form: pass it with --extra)."""
    mbs, ckpt, attn, *rest = spec.split(":")
    seq = next((int(r.split("=", 1)[1]) for r in rest if r.startswith("seq=")), SEQ)
    return int(mbs), ckpt == "1", attn, seq, [r for r in rest if not r.startswith("seq=")]


def default_ours() -> str:
    """bf16, fp8 and 32k rows; micro-batch 6 where it fits (an H200: 80.5 GiB at seq 4096), else 4 (an H100's 80)."""
    import torch

    big = torch.cuda.is_available() and torch.cuda.get_device_properties(0).total_memory > 100 * 1024**3
    mbs = 6 if big else 4
    return f"{mbs}:0:flex_attention,{mbs}:0:flex_attention:trainer.precision=fp8,1:1:flex_attention:seq=32768"


def peer(gpus: int, mbs: int, ckpt: bool, steps: int, work: Path, liger: bool = False) -> dict:
    name = f"peer{'_liger' if liger else ''}-g{gpus}-mb{mbs}-ac{int(ckpt)}"
    cmd = [sys.executable, "-m", "benchmarks.peer_sft", "--gpus", str(gpus), "--micro-batch", str(mbs),
           "--checkpointing", str(int(ckpt)), "--steps", str(steps), *(["--liger"] if liger else [])]
    steps_seen = parse_steps(run_logged(cmd, work / f"{name}.log"))
    return {**_row(name, gpus, mbs, ckpt, "sdpa", steps_seen, "max_alloc"), "extra": "Liger-Kernel" if liger else ""}


def _row(name: str, gpus: int, mbs: int, ckpt: bool, attn: str, steps: list, mem_key: str) -> dict:
    skip = min(5, max(0, len(steps) - 3))
    return {"name": name, "side": name.split("-")[0], "gpus": gpus, "mbs": mbs, "ckpt": ckpt, "attn": attn,
            "steps": len(steps),
            "tgs": steady(steps, "tgs", skip), "mfu": steady(steps, "mfu", skip),
            "mem": max((s.get(mem_key, float("nan")) for s in steps), default=float("nan"))}


def table(rows: list[dict], peer_best: float) -> str:
    """One line per run; per-GPU efficiency against the same configuration's 1-GPU row, where there is one."""
    one_gpu = {_config(r): r["tgs"] for r in rows if r["gpus"] == 1}
    lines = ["| run | GPUs | micro-batch | seq | act. ckpt | attention | settings | tokens/s/GPU | MFU | peak mem GiB "
             "| vs peer best | per-GPU vs 1 GPU |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["tgs"] / peer_best if peer_best == peer_best and peer_best > 0 else float("nan")
        base = one_gpu.get(_config(r))
        efficiency = f"{100 * r['tgs'] / base:.0f}%" if base and r["gpus"] > 1 else ""
        lines.append(f"| {r['name']} | {r['gpus']} | {r['mbs']} | {r.get('seq', SEQ)} | {'on' if r['ckpt'] else 'off'} "
                     f"| {r['attn']} | {r.get('extra', '')} | "
                     f"{r['tgs']:.0f} | {100 * r['mfu']:.1f}% | {r['mem']:.1f} | {ratio:.2f}x | {efficiency} |")
    return "\n".join(lines)


def _config(row: dict) -> tuple:
    return row["side"], row["mbs"], row["ckpt"], row["attn"], row.get("seq"), row.get("extra")  # all but GPUs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", default="1,2")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ours", default=None,
                        help="mbs:ckpt:attn[:seq=N][:override...],... (see ours_spec); default: bf16, fp8 and 32k rows "
                             "at the micro-batch that fits this GPU (default_ours)")
    parser.add_argument("--peer", default="4:1,2:0,4:1:liger,2:0:liger",
                        help="mbs:ckpt[:liger],... (liger: with Liger-Kernel, as LLaMA-Factory applies it)")
    parser.add_argument("--peer-gpus", default="1",
                        help="GPU counts the peer runs on (its best 1-GPU row is the ratios' base)")
    parser.add_argument("--pycache", default="/tmp/bench-pycache",
                        help="one bytecode cache for every process, as a pip-installed image has ('' leaves it)")
    add_common_args(parser, "/tmp/bench-sft")
    args = parse_args(parser)
    bytecode_cache(args.pycache)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = write_chat_jsonl(work / "chat.jsonl", samples=1000)  # ~1.9M tokens: 20 steps of 6 x 4096 use 0.5M
    rows = []
    peer_gpus = {int(g) for g in filter(None, args.peer_gpus.split(","))}
    for gpus in [int(g) for g in args.gpus.split(",")]:
        for spec in filter(None, args.peer.split(",") if gpus in peer_gpus else []):
            mbs, ckpt, *kernels = spec.split(":")
            rows.append(peer(gpus, int(mbs), ckpt == "1", args.steps, work, liger=kernels == ["liger"]))
        for spec in filter(None, (args.ours or default_ours()).split(",")):
            mbs, ckpt, attn, seq, overrides = ours_spec(spec)
            rows.append(ours(gpus, mbs, ckpt, attn, args.steps, data, work, args.extra.split() + overrides, seq))
            print(table(rows[-1:], float("nan")), flush=True)
    peer_best = max((r["tgs"] for r in rows if r["side"].startswith("peer") and r["gpus"] == 1), default=float("nan"))
    settings = " ".join(FAST + args.extra.split())
    record(args.results, f"SFT, Qwen3-1.7B shape, seq {SEQ}, ZeRO-3 bf16, ours with {settings}", table(rows, peer_best),
           args.commit)

if __name__ == "__main__":
    main()
