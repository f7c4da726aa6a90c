"""Block output error on FP inputs, the measure both sides of benchmarks/quant.py are compared on:
rel_err = sum |block_q(x) - block_fp(x)|^2 / sum |block_fp(x) - x|^2 over the calibration tokens, with x
the FP model's inputs to that block (what `job=quantize quant.parallel=blocks` records as
block_rel_err). FP blocks are rebuilt from the model directory's safetensors, one at a time."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from jobs.quantize.algorithms.metrics import block_output_error


def tensors_with_prefix(model_dir: Path, prefix: str) -> dict[str, torch.Tensor]:
    index = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [
        "model.safetensors"]
    out = {}
    for name in files:
        with safe_open(model_dir / name, framework="pt") as fh:
            out.update({k[len(prefix):]: fh.get_tensor(k) for k in fh.keys() if k.startswith(prefix)})
    return out


@torch.no_grad()
def decoder(model_dir: str | Path, count: int) -> torch.nn.Module:
    """The model of `model_dir`'s config cut to `count` blocks, weights uninitialised (bf16, sdpa, MoE experts one
    Linear each as the exports name them): its blocks take any family's FP or quantized weights."""
    from transformers import AutoConfig

    from core.models.auto import from_config
    from core.models.moe import unfuse_experts

    config = AutoConfig.from_pretrained(model_dir)
    config.num_hidden_layers = count
    with torch.device("meta"):
        model = from_config(config, attn_implementation="sdpa")
    unfuse_experts(model)
    return model.to_empty(device="cpu").to(torch.bfloat16)


def _load_block(block: torch.nn.Module, model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> torch.nn.Module:
    from core.models.families import family_of

    family = family_of(model)
    rename = family.from_disk if family is not None else (lambda name: name)
    block.load_state_dict({rename(f".{k}")[1:]: v for k, v in tensors.items()})
    return block


def block_errors(model_dir: str, ids: np.ndarray, q_blocks: list[torch.nn.Module], batch: int = 8) -> list[float]:
    root, dev = Path(model_dir), torch.device("cuda" if torch.cuda.is_available() else "cpu")
    skeleton = decoder(root, len(q_blocks))
    embed = tensors_with_prefix(root, "model.embed_tokens.")["weight"].to(dev)
    rotary = type(skeleton.model.rotary_emb)(skeleton.config).to(dev)  # built for real: to_empty() left it blank
    xs = [embed[torch.as_tensor(ids[i:i + batch], device=dev)] for i in range(0, len(ids), batch)]

    def run(block: torch.nn.Module, x: torch.Tensor, _batch: int = 0) -> torch.Tensor:
        pos = torch.arange(x.shape[1], device=dev).unsqueeze(0).expand(x.shape[0], -1)
        y = block(x, position_embeddings=rotary(x, pos), position_ids=pos)
        return y[0] if isinstance(y, tuple) else y

    errors = []
    for index, q_block in enumerate(q_blocks):
        fp = _load_block(skeleton.model.layers[index], skeleton, tensors_with_prefix(root, f"model.layers.{index}."))
        fp = fp.to(dev)
        errors.append(block_output_error(fp, copy.deepcopy(q_block).to(dev), run, xs)["rel_err"])
        xs = [run(fp, x) for x in xs]  # the next block's FP inputs
        fp.to("cpu")
    return errors


def blocks_from_export(export: Path, model_dir: str, count: int) -> list[torch.nn.Module]:
    """Decoder blocks (any family) rebuilt from a compressed-tensors export (ours or a peer's), weights dequantized
    by the library's decompressor (core/quant/load.py), in bf16. The block tensors are read without their prefix:
    uniform schemes only (targets by class)."""
    from core.quant.load import dequantized_state, quant_config_of

    qc = quant_config_of(export)
    if qc is None or qc.format not in ("pack-quantized", "int-quantized"):
        raise ValueError(f"{export}: not a compressed-tensors integer export ({qc and qc.format})")
    skeleton = decoder(model_dir, count)
    return [_load_block(copy.deepcopy(skeleton.model.layers[index]), skeleton,
                        dequantized_state(tensors_with_prefix(export, f"model.layers.{index}."), qc))
            .to(torch.bfloat16) for index in range(count)]
