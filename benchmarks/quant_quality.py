"""Quantization quality on CPU: train qwen3_tiny with the project's SFT job on the shipped text corpus,
then quantize it (RTN, AWQ, GPTQ at w3g128 and w4g128) and compare held-out perplexity. Training,
calibration and evaluation all read the sentences in the same chat format.

    python -m benchmarks.quant_quality [--steps 300] [--work /tmp/quant-quality]

Every step runs through `python -m orchestrator`; prints a table (paste into benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cli(args: list[str], work: Path) -> str:
    cmd = [sys.executable, "-m", "orchestrator", *args, f"job.storage={work}", "cluster.include_dashboard=false"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout


def _chat_corpus(work: Path, split: str) -> Path:
    """A text split as chat samples whose assistant turn is the sentence: SFT trains on the train split,
    calibration and evaluation read the same format (the model's distribution, not bare text)."""
    out = work / f"{split}_chat.jsonl"
    with open(out, "w") as fh:
        for line in (REPO / f"data/text/{split}.txt").read_text().splitlines():
            if line.strip():
                fh.write(json.dumps([{"role": "user", "content": "Say a sentence."},
                                     {"role": "assistant", "content": line}]) + "\n")
    return out


def _perplexity(output: str) -> float:
    match = re.search(r"\|\s*model\s*\|[^|]*\|\s*([\d.]+)\s*\|", output)
    assert match, output[-2000:]
    return float(match.group(1))


def _quantize(name: str, overrides: list[str], fp: Path, data: Path, evaluate: list[str], work: Path) -> float:
    if not (work / name / "export" / "config.json").is_file():
        _cli(["job=quantize", "model=hf", f"model.path={fp}", *overrides, f"calib.path={data}",
              "calib.format=chat_jsonl", "calib.num_samples=64", "calib.seq_len=256", "quant.num_workers=1",
              f"job.name={name}"], work)
    return _perplexity(_cli([*evaluate, f"model.path={work / name / 'export'}"], work))


def _mixed(budget: float, fp: Path, data: Path, evaluate: list[str], work: Path) -> float:
    """Sensitivity search (w3g128 / w4g128 / w8 per Linear) at `budget` bits, then GPTQ in those formats."""
    _cli(["job=sensitivity", "model=hf", f"model.path={fp}", f"calib.path={data}", "calib.format=chat_jsonl",
          "calib.num_samples=64", "calib.seq_len=256", "search.candidates=[w3g128,w4g128,w8]",
          f"search.effective_bits={budget}", "job.name=sens"], work)
    return _quantize("gptq-mixed", ["quant=mixed", f"quant.recipe={work / 'sens' / 'report'}"], fp, data, evaluate,
                     work)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--work", default="/tmp/quant-quality")
    parser.add_argument("--formats", default="w4g128,w3g128", help="uniform rows ('' for none)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data, heldout = _chat_corpus(work, "train"), _chat_corpus(work, "heldout")
    evaluate = ["job=evaluate", "model=hf", f"eval.path={heldout}", "eval.format=chat_jsonl"]
    fp = work / "fp" / "export"
    if not (fp / "config.json").is_file():  # a rerun reuses the trained model and finished quantizations
        _cli(["job=sft", f"data.datasets=[{{path: {data}}}]", "data.max_length=256", "data.pack_max_length=512",
              f"trainer.max_steps={args.steps}", "trainer.micro_batch_size=4", "trainer.optim.lr=2e-3",
              "trainer.optim.warmup_steps=10", "job.name=fp"], work)
    rows = [("FP (fp32)", "-", _perplexity(_cli([*evaluate, f"model.path={fp}"], work)))]
    for fmt in filter(None, args.formats.split(",")):
        for algo in ("rtn", "awq", "gptq"):
            rows.append((algo, fmt, _quantize(f"{algo}-{fmt}", [f"quant={algo}", f"quant.format={fmt}"], fp, data,
                                              evaluate, work)))
            print(f"{algo} {fmt}: {rows[-1][2]:.4f}", flush=True)
    # mixed at the size of uniform w4g128: 4 bits + a 16-bit scale per 128 weights
    rows.append(("gptq mixed (w3g128/w4g128/w8 per Linear)", "4.125 bits", _mixed(4.125, fp, data, evaluate, work)))
    fp_ppl = rows[0][2]
    print("\n| method | format | held-out perplexity | vs FP |\n|---|---|---|---|")
    for method, fmt, ppl in rows:
        print(f"| {method} | {fmt} | {ppl:.4f} | {ppl - fp_ppl:+.4f} |")


if __name__ == "__main__":
    main()
