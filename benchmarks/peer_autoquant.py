"""The peer users would pick instead of `job=sensitivity`: NVIDIA ModelOpt's `mtq.auto_quantize` (gradient
method) on the same model directory and calibration token ids, candidates INT4_AWQ_CFG (W4A16, groups of
128) and INT8_DEFAULT_CFG (W8A8: per-channel weights, per-tensor static activations) plus its implicit
"not quantized", lm_head disabled, every batch used for calibration and for scoring. The call, checked
against the 0.47.0 wheel's modelopt/torch/quantization/model_quant.py:

    auto_quantize(model, constraints, quantization_formats, data_loader, forward_step, loss_func,
                  forward_backward_step, disabled_layers, num_calib_steps, num_score_steps, verbose,
                  method, checkpoint, module_search_spaces, fixed_quantization_config) -> (model, state)

Prints one `PEER_RESULT {json}` line: load seconds (from_pretrained onto the device), auto_quantize
seconds, peak GPU memory during auto_quantize (model included), the effective bits it reached and the
formats it chose (counts over its decision groups: q/k/v together, gate/up together). If modelopt
cannot be imported, the line carries `skipped` and the reason instead.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import numpy as np
import torch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--ids", required=True, help=".npy of [samples, seq_len] token ids")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--effective-bits", type=float, required=True, help="its budget: lm_head counts at 16")
    parser.add_argument("--formats", default="INT4_AWQ_CFG,INT8_DEFAULT_CFG")
    args = parser.parse_args()
    try:
        import modelopt.torch.quantization as mtq
    except Exception as err:  # noqa: BLE001 - any import failure is the reason reported
        print("PEER_RESULT " + json.dumps({"skipped": f"import modelopt.torch.quantization: {err!r}"}), flush=True)
        return
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ids = torch.as_tensor(np.load(args.ids), device=device)
    data = [{"input_ids": b, "labels": b} for b in ids.split(args.batch_size)]
    began = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, device_map=device)
    _sync()
    load = time.perf_counter() - began
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    model, state = mtq.auto_quantize(
        model, constraints={"effective_bits": args.effective_bits},
        quantization_formats=[getattr(mtq, name) for name in args.formats.split(",")],
        data_loader=data, forward_step=lambda m, batch: m(**batch), loss_func=lambda out, batch: out.loss,
        disabled_layers=["*lm_head*"], num_calib_steps=len(data), num_score_steps=len(data), method="gradient")
    _sync()
    wall = time.perf_counter() - began
    best = state["best"]
    print("PEER_RESULT " + json.dumps({
        "load": load, "wall": wall, "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
        else float("nan"), "blocks": len(model.model.layers), "batches": len(data),
        "effective_bits": float(best["constraints"]["effective_bits"]), "budget": args.effective_bits,
        "satisfied": bool(best["is_satisfied"]),
        "chosen": dict(Counter(str(r).split("(")[0] for r in best["recipe"].values()))}), flush=True)


if __name__ == "__main__":
    main()
