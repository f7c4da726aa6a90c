"""A separate process with only transformers and compressed-tensors: how a user's serving environment reads an export.

Run as a script (`python plain_transformers.py`), never imported by the project: it reads one JSON request per line
on stdin, {"export": dir, "reference": file}, and answers one JSON line on stdout. The reference file (safetensors,
written by the project's process) holds `input_ids`, the project's reloaded logits `logits`, and the project's
dequantized weight of every quantized Linear under its name on disk. Per export it reports:
  - `weights_max_abs`: compressed-tensors' own model-free decompression (CompressedTensorsDequantizer) of the export
    against the project's dequantized weights, the largest absolute difference over every quantized Linear;
  - `logits_rel`: `AutoModelForCausalLM` (or `AutoModelForImageTextToText` for a VLM) `from_pretrained` of the export,
    its logits on `input_ids` against the project's, relative Frobenius norm; or `load_error` when transformers
    cannot load it;
  - `project_modules`: project modules this process imported (must stay empty).
"""

from __future__ import annotations

import json
import sys
import traceback

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

PROJECT = ("core", "jobs", "kernels", "orchestrator", "benchmarks")


def _tensors(export: str) -> dict[str, torch.Tensor]:
    import glob

    out: dict[str, torch.Tensor] = {}
    for path in sorted(glob.glob(f"{export}/model*.safetensors")):
        out.update(load_file(path))
    return out


def _weights_max_abs(export: str, reference: dict[str, torch.Tensor]) -> float:
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer

    tensors = _tensors(export)
    # it matches modules by name only, so int8 weights (int-quantized) and an embedding's float weight look alike:
    # the modules whose weight is stored as floats are told apart by their dtype
    float_weights = [k.removesuffix(".weight") for k, v in tensors.items() if k.endswith(".weight")
                     and v.is_floating_point()]
    dequantized = CompressedTensorsDequantizer(export, ignore=float_weights, dtype=torch.float32).process(tensors)
    names = [k for k in reference if k not in ("input_ids", "logits")]
    if not names:
        raise ValueError("the reference names no quantized weight")
    return max((dequantized[k].float() - reference[k].float()).abs().max().item() for k in names)


def _logits_rel(export: str, reference: dict[str, torch.Tensor]) -> float:
    config = AutoConfig.from_pretrained(export)
    cls = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    model = cls.from_pretrained(export, dtype=torch.float32).eval()
    with torch.no_grad():
        got = model(input_ids=reference["input_ids"], use_cache=False).logits.float()
    want = reference["logits"].float()
    return ((got - want).norm() / want.norm()).item()


def check(request: dict[str, str]) -> dict[str, object]:
    with safe_open(request["reference"], "pt") as f:
        reference = {k: f.get_tensor(k) for k in f.keys()}
    out: dict[str, object] = {"export": request["export"],
                              "weights_max_abs": _weights_max_abs(request["export"], reference)}
    try:
        out["logits_rel"] = _logits_rel(request["export"], reference)
    except Exception as err:  # reported, not raised: the test decides which families may fail to load
        out["load_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    out["project_modules"] = sorted(m for m in sys.modules if m.split(".")[0] in PROJECT)
    return out


def main() -> None:
    for line in sys.stdin:
        try:
            answer = check(json.loads(line))
        except Exception:
            answer = {"error": traceback.format_exc(limit=3)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
