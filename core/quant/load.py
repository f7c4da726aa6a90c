"""Reload a compressed-tensors export (jobs/quantize/export.py) as a plain transformers model (a causal LM, or the
VLM class with its FP vision tower: core/models/auto.py) whose quantized Linears hold the weights the library's own
decompressor gives (core/quant/ct.py): runs anywhere, the quantized model's math. Linears whose scheme quantizes
activations (w8a8, w4a8) get per-token int8 fake quant on their inputs, as the deployed kernels compute."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from core.models.disk_names import from_disk, module_name
from core.models.moe import unfuse_experts
from core.quant import ct
from core.quant.act_quant import install_act_quant


def quant_config_of(path: str | Path) -> Any | None:
    """The export's compressed-tensors QuantizationConfig; None: not a compressed-tensors model."""
    return ct.read_config(json.loads((Path(path) / "config.json").read_text()))


def dequantized_state(tensors: dict[str, torch.Tensor], qconfig: Any,
                      dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every quantized Linear's tensors (names as in the export) replaced by its dequantized `weight`, computed in
    `dtype` (default: the stored scales')."""
    return ct.decompress(tensors, qconfig, dtype)


def load_quantized(path: str | Path, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
                   device: str | torch.device = "cpu") -> Any:
    """The export as a plain model in `dtype` on `device` (built there: an 8B's random init alone takes about a
    minute on a CPU); the weights are dequantized on the CPU, then copied in."""
    from transformers import AutoConfig

    from core.models.auto import from_config, supported_attention
    from core.models.export import load_weights

    qc = quant_config_of(path)
    if qc is None:
        raise ValueError(f"{path}: not a compressed-tensors export")
    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are already dequantized: a plain model
    config._attn_implementation = supported_attention(config, attn_implementation)
    with torch.device(device):
        model = from_config(config, dtype=dtype).eval()  # a causal LM, or the VLM class (its vision tower FP)
        unfuse_experts(model)  # mixture-of-experts: one Linear per expert projection, as exported
    tensors = load_weights(path)
    quantized = ct.quantized_modules(tensors)  # names on disk, as the config's targets
    memory = from_disk(model)
    state = {memory(k): v.to(dtype) for k, v in dequantized_state(tensors, qc, dtype).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"{path}: weights do not match the config (missing {sorted(set(missing) - tied)[:5]}, "
                         f"unexpected {unexpected[:5]})")
    model.tie_weights()
    for name in quantized:  # W8A8 / W4A8: the deployed kernels quantize each token's input to int8
        bits = ct.act_bits_of(ct.scheme_of(qc, name))
        if bits:
            install_act_quant(model, [module_name(memory, name)], bits)
    return model
