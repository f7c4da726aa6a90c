"""The peer users would pick instead of `job=quantize`: llm-compressor's `oneshot` with its GPTQ or AWQ
modifier (W4A16: int4, symmetric, groups of 128, lm_head left FP), on the same model directory and the
same calibration token ids. Prints one `PEER_RESULT {json}` line: oneshot wall time (model loading not
counted, as for ours), peak GPU memory, and the block output error on FP inputs of the first blocks of its
compressed export (benchmarks/quant_error.py, the same measure our blocks mode records)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.quant_error import block_errors, blocks_from_export


def recipe(algo: str):
    if algo == "gptq":
        from llmcompressor.modifiers.quantization import GPTQModifier

        return GPTQModifier(targets="Linear", scheme="W4A16", ignore=IGNORE)
    from llmcompressor.modifiers.awq import AWQModifier

    return AWQModifier(targets=["Linear"], scheme="W4A16", ignore=IGNORE)


IGNORE = ["lm_head", "re:.*mlp\\.gate$"]  # MoE routers FP, as in llm-compressor's own MoE examples


def for_calibration(model: torch.nn.Module) -> torch.nn.Module:
    """An MoE model as llm-compressor's MoE examples prepare it: its calibration modules (experts as Linears, every
    expert fed every token), where this version has them; a dense model as is."""
    if not any(name.endswith(".experts") for name, _ in model.named_modules()):
        return model
    try:
        from llmcompressor.modeling import replace_modules_for_calibration
    except ImportError:
        print("peer: no replace_modules_for_calibration in this llm-compressor; MoE model as loaded", flush=True)
        return model
    return replace_modules_for_calibration(model)


def exported_blocks(model: torch.nn.Module, model_dir: str, out: Path, count: int) -> list[torch.nn.Module]:
    """The first `count` blocks as the peer's compressed export holds them: saved with save_compressed=True
    (compressed-tensors pack-quantized: packed integers and scales), then read back by `blocks_from_export`.
    Measuring live modules after `oneshot` did not see AWQ's rounding (RESULTS.md, run 8); the export is what
    users deploy."""
    model.save_pretrained(out, save_compressed=True)
    return blocks_from_export(out, model_dir, count)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--algo", choices=("gptq", "awq"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--ids", required=True, help=".npy of [samples, seq_len] token ids")
    parser.add_argument("--eval-blocks", type=int, default=4)
    parser.add_argument("--export", required=True, help="where the peer's compressed model is saved")
    args = parser.parse_args()
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    ids = np.load(args.ids)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": np.ones_like(ids).tolist()})
    # the measure's own check: the unquantized blocks must come out at ~0 (same layer, same attention path)
    self_check = block_errors(args.model, ids, [model.model.layers[i] for i in range(args.eval_blocks)])
    cuda = torch.cuda.is_available()  # on CPU (quality checks) there is no peak to report
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:  # llm-compressor's AWQ pins its activation cache, which needs an accelerator: on CPU, keep it as is
        torch.Tensor.pin_memory = lambda self, *args, **kwargs: self
    model = for_calibration(model)
    began = time.perf_counter()
    oneshot(model=model, dataset=data, recipe=recipe(args.algo), num_calibration_samples=len(ids),
            max_seq_length=ids.shape[1])
    wall = time.perf_counter() - began
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    layers = model.model.layers
    as_run = block_errors(args.model, ids, [layers[i] for i in range(args.eval_blocks)])
    try:
        errors = block_errors(args.model, ids, exported_blocks(model, args.model, Path(args.export),
                                                               args.eval_blocks))
    except Exception as err:  # keep the timing row; the table then shows the as-run errors, flagged
        print(f"export measure failed: {type(err).__name__}: {err}", flush=True)
        errors = []
    print("PEER_RESULT " + json.dumps({"algo": args.algo, "wall": wall, "blocks": len(layers), "peak_gib": peak,
                                       "block_rel_err": errors or as_run, "measured_on": "export" if errors
                                       else "live modules", "as_run_block_rel_err": as_run,
                                       "fp_self_check": self_check}),
          flush=True)


if __name__ == "__main__":
    main()
