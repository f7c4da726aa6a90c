"""Reload a pack-quantized export (jobs/quantize/export.py) as a plain transformers model (a causal LM, or the
VLM class with its FP vision tower: core/models/auto.py) whose quantized Linears hold the dequantized weights
(fake quant): runs anywhere, matches the quantized model's math.
Activation-quantized formats (w8a8) get per-token int8 fake quant on the quantized Linears."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from core.models.families import family_of
from core.models.moe import unfuse_experts
from core.quant.act_quant import install_act_quant
from kernels.quant import get_op


def quant_config_of(path: str | Path) -> dict[str, Any] | None:
    config = json.loads((Path(path) / "config.json").read_text())
    qc = config.get("quantization_config")
    return qc if qc and qc.get("quant_method") == "compressed-tensors" else None


def scheme_of(qc: dict[str, Any], module: str) -> dict[str, Any]:
    """The config group that targets `module`: by name (mixed precision), else the "Linear" group."""
    groups = list(qc["config_groups"].values())
    for group in groups:
        if module in group["targets"]:
            return group
    for group in groups:
        if "Linear" in group["targets"]:
            return group
    raise ValueError(f"no quantization config group targets {module}")


def dequantized_state(tensors: dict[str, torch.Tensor], qc: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Replace every <name>.weight_packed/_scale/_shape/_zero_point group by <name>.weight (float32)."""
    unpack, dequantize = get_op("unpack_int"), get_op("dequantize")
    out = {k: v for k, v in tensors.items() if not k.rpartition(".")[2].startswith("weight_")}
    for key in tensors:
        if not key.endswith(".weight_packed"):
            continue
        prefix = key[: -len(".weight_packed")]
        weights = scheme_of(qc, prefix)["weights"]
        bits, group_size = weights["num_bits"], weights.get("group_size")
        rows, cols = tensors[f"{prefix}.weight_shape"].tolist()
        q = unpack(tensors[key], bits, cols, dim=1)
        scale = tensors[f"{prefix}.weight_scale"].float()
        zp = tensors.get(f"{prefix}.weight_zero_point")
        zero = unpack(zp, bits, rows, dim=0).float() if zp is not None else torch.zeros_like(scale)
        out[f"{prefix}.weight"] = dequantize(q, scale, zero, group_size if weights["strategy"] == "group" else None)
    return out


def load_quantized(path: str | Path, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa") -> Any:
    from transformers import AutoConfig

    from core.models.auto import from_config, supported_attention

    qc = quant_config_of(path)
    if qc is None or qc.get("format") != "pack-quantized":
        raise ValueError(f"{path}: not a compressed-tensors pack-quantized export")
    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are already dequantized: a plain model
    config._attn_implementation = supported_attention(config, attn_implementation)
    model = from_config(config, dtype=dtype).eval()  # a causal LM, or the VLM class (its vision tower FP)
    unfuse_experts(model)  # mixture-of-experts: one Linear per expert projection, as exported
    family = family_of(model)
    tensors = load_file(Path(path) / "model.safetensors")
    if family is not None and family.disk_names:
        tensors = {family.from_disk(k): v for k, v in tensors.items()}
        qc = {**qc, "config_groups": {g: {**v, "targets": [family.from_disk(t) for t in v["targets"]]}
                                      for g, v in qc["config_groups"].items()}}
    quantized = [k[: -len(".weight_packed")] for k in tensors if k.endswith(".weight_packed")]
    state = dequantized_state(tensors, qc)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"{path}: weights do not match the config (missing {sorted(set(missing) - tied)[:5]}, "
                         f"unexpected {unexpected[:5]})")
    model.tie_weights()
    for name in quantized:  # W8A8: the deployed kernels quantize each token's input to int8
        acts = scheme_of(qc, name).get("input_activations")
        if acts:
            install_act_quant(model, [name], acts["num_bits"])
    return model
