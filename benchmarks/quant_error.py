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
def block_errors(model_dir: str, ids: np.ndarray, q_blocks: list[torch.nn.Module], batch: int = 8) -> list[float]:
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    root, dev = Path(model_dir), torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = AutoConfig.from_pretrained(root)
    # a standalone layer has no attention implementation set; eager without a mask would run non-causal
    # attention, while the quantized blocks (from a loaded model) run sdpa's causal path
    config._attn_implementation = "sdpa"
    embed = tensors_with_prefix(root, "model.embed_tokens.")["weight"].to(dev)
    rotary = LlamaRotaryEmbedding(config).to(dev)
    xs = [embed[torch.as_tensor(ids[i:i + batch], device=dev)] for i in range(0, len(ids), batch)]
    def run(block: torch.nn.Module, x: torch.Tensor, _batch: int = 0) -> torch.Tensor:
        pos = torch.arange(x.shape[1], device=dev).unsqueeze(0).expand(x.shape[0], -1)
        y = block(x, position_embeddings=rotary(x, pos), position_ids=pos)
        return y[0] if isinstance(y, tuple) else y

    errors = []
    for index, q_block in enumerate(q_blocks):
        fp = LlamaDecoderLayer(config, index).to(dev, torch.bfloat16)
        fp.load_state_dict({k: v for k, v in tensors_with_prefix(root, f"model.layers.{index}.").items()})
        errors.append(block_output_error(fp, copy.deepcopy(q_block).to(dev), run, xs)["rel_err"])
        xs = [run(fp, x) for x in xs]  # the next block's FP inputs
        del fp
    return errors


def blocks_from_export(export: Path, model_dir: str, count: int) -> list[torch.nn.Module]:
    """Llama blocks rebuilt from a pack-quantized export, weights dequantized by our loader
    (core/quant/load.py), in bf16."""
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from core.quant.load import dequantized_state, quant_config_of

    qc = quant_config_of(export)
    if qc is None or qc.get("format") != "pack-quantized":
        raise ValueError(f"{export}: not a pack-quantized export ({qc and qc.get('format')})")
    config = AutoConfig.from_pretrained(model_dir)
    config._attn_implementation = "sdpa"  # as the FP reference in quant_error.py: a standalone layer has none
    blocks = []
    for index in range(count):
        block = LlamaDecoderLayer(config, index)
        block.load_state_dict(dequantized_state(tensors_with_prefix(export, f"model.layers.{index}."), qc))
        blocks.append(block.to(torch.bfloat16))
    return blocks
