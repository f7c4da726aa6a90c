"""Write a quantized model in the compressed-tensors "pack-quantized" layout, from block checkpoints only
(so a resumed job writes the same bytes as an uninterrupted one). Written into a staging dir, then
published atomically as <job>/export (local or s3://, core.storage; with its COMPLETE marker):

  model.safetensors   per quantized Linear <name>: weight_packed int32 [out, ceil(in / (32 // bits))],
                      weight_scale f32 [out, n_groups], weight_shape int64 [2], and (asymmetric only)
                      weight_zero_point int32 [ceil(out / (32 // bits)), n_groups] packed along dim 0;
                      every other tensor as the FP model has it after quantization (smoothed norms
                      included); a tied lm_head is not written (tie_word_embeddings)
  config.json         the model config + quantization_config (compressed-tensors, see quantization_config)
  tokenizer files     tokenizer.save_pretrained; a VLM's processor files too (processor.save_pretrained)
  smoothing_scales.safetensors   AWQ/SmoothQuant per-channel scales s, key "<block>.<producer>": the
                      producer's output was divided by s, its consumers' weight columns multiplied by s
  modality_weights.json   MBQ: per block the mean |dL/dY| over vision / text tokens and the loss weights
  quant_info.json     algorithm, format, per-block metrics
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from core import storage
from core.blocks.layerwise import Layerwise
from core.tracking import RunHandle
from jobs.quantize import checkpoint
from kernels.quant import QuantFormat, get_op


def _scheme(fmt: QuantFormat) -> dict[str, Any]:
    weights = {"num_bits": fmt.weight_bits, "type": "int", "symmetric": fmt.symmetric,
               "strategy": "group" if fmt.group_size else "channel", "group_size": fmt.group_size,
               "dynamic": False, "actorder": None, "observer": "minmax"}
    acts = None
    if fmt.act_bits:
        acts = {"num_bits": fmt.act_bits, "type": "int", "symmetric": True, "strategy": "token",
                "dynamic": True, "observer": None}
    return {"weights": weights, "input_activations": acts, "output_activations": None}


def quantization_config(fmt: QuantFormat, ignore: list[str],
                        per_module: dict[str, QuantFormat | None] | None = None) -> dict[str, Any]:
    """One config group targeting every Linear; with mixed precision (`per_module`: full name -> format,
    None = left FP) one group per format targeting its modules by name, FP modules added to ignore."""
    groups = {"group_0": {"targets": ["Linear"], **_scheme(fmt)}}
    if per_module:
        by_format: dict[QuantFormat, list[str]] = {}
        for name, f in sorted(per_module.items()):
            if f is not None:
                by_format.setdefault(f, []).append(name)
        groups = {f"group_{i}": {"targets": names, **_scheme(f)} for i, (f, names) in enumerate(by_format.items())}
        ignore = [*ignore, *sorted(n for n, f in per_module.items() if f is None)]
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": groups, "ignore": list(ignore), "kv_cache_scheme": None}


def packed_tensors(prefix: str, layer: dict[str, torch.Tensor], fmt: QuantFormat) -> dict[str, torch.Tensor]:
    pack = get_op("pack_int")
    q = layer["qweight"]
    out = {f"{prefix}.weight_packed": pack(q, fmt.weight_bits, dim=1),
           f"{prefix}.weight_scale": layer["scale"],
           f"{prefix}.weight_shape": torch.tensor(list(q.shape), dtype=torch.int64)}
    if not fmt.symmetric:
        out[f"{prefix}.weight_zero_point"] = pack(layer["zero"], fmt.weight_bits, dim=0)
    return out


def write_export(model: Any, tokenizer: Any, blocks_root: str | Path, fmt: QuantFormat, ignore: list[str],
                 final: str, info: dict[str, Any], run: RunHandle,
                 per_module: dict[str, QuantFormat | None] | None = None, processor: Any = None,
                 modality_weights: dict[str, Any] | None = None) -> str:
    """Write into a staging dir, log it to MLflow, then publish it as `final` atomically (local or s3://).
    `per_module`: mixed precision, full Linear name -> its format (None: left FP)."""
    per_module = per_module or {}
    lw = Layerwise(model)
    state = {k: v for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # shared with the embedding; transformers re-ties on load
    smoothing: dict[str, torch.Tensor] = {}
    for index in range(len(lw.blocks)):
        prefix = lw.block_prefix(index)
        saved = checkpoint.load_block(checkpoint.block_dir(blocks_root, index))
        for name, layer in saved["layers"].items():
            del state[f"{prefix}{name}.weight"]
            state.update(packed_tensors(f"{prefix}{name}", layer, per_module.get(f"{prefix}{name}") or fmt))
        state.update({f"{prefix}{k}": v for k, v in saved["other"].items()})
        smoothing.update({f"{prefix}{k}": v for k, v in saved["smooth"].items()})
    staged = storage.staging_dir(final)
    disk = lw.family.to_disk if lw.family is not None else (lambda name: name)  # names as the family's checkpoints
    save_file({disk(k): v.contiguous() for k, v in sorted(state.items())}, staged / "model.safetensors",
              metadata={"format": "pt"})
    config = json.loads(model.config.to_json_string(use_diff=False))
    serving_fp = list(lw.family.serving_fp) if lw.family is not None else []
    config["quantization_config"] = quantization_config(fmt, [*ignore, *serving_fp],
                                                        {disk(k): v for k, v in per_module.items()})
    (staged / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    tokenizer.save_pretrained(staged)
    if processor is not None:
        processor.save_pretrained(str(staged))
    if modality_weights:
        (staged / "modality_weights.json").write_text(json.dumps(modality_weights, indent=2, sort_keys=True))
    if smoothing:
        save_file(dict(sorted(smoothing.items())), staged / "smoothing_scales.safetensors")
    (staged / "quant_info.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
    run.log_artifacts(staged, "export")
    return storage.publish_dir(staged, final)
