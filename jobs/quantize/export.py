"""Write a quantized model as compressed-tensors checkpoints are written (core/quant/ct.py: the library's schemes,
config and compressors), from block checkpoints only (so a resumed job writes the same bytes as an uninterrupted one).
Written into a staging dir, then published atomically as <job>/export (local or s3://, core.storage; COMPLETE marker):

  model.safetensors   (shards + index above 5 GB: core/models/export.py) tensor names as the input checkpoint has
                      them on disk (core/models/disk_names.py); per
                      quantized Linear the library's tensors for its scheme's format (pack-quantized: weight_packed,
                      weight_scale, weight_shape[, weight_zero_point]; int-quantized: int8 weight, weight_scale);
                      every other tensor as the FP model has it after quantization (smoothed norms included), in the
                      export's dtype; a tied lm_head is not written (tie_word_embeddings)
  config.json         the model config (the input's dtype, use_cache, the tokenizer's eos / pad ids) +
                      quantization_config (the library's, with its version field); generation_config.json
  tokenizer files     tokenizer.save_pretrained; a VLM's processor files too (processor.save_pretrained)
  smoothing_scales.safetensors   AWQ/SmoothQuant per-channel scales s, key "<block>.<producer>": the
                      producer's output was divided by s, its consumers' weight columns multiplied by s
  modality_weights.json   MBQ: per block the mean |dL/dY| over vision / text tokens and the loss weights
  quant_info.json     algorithm, format, per-block metrics
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from core import storage
from core.blocks.layerwise import Layerwise
from core.models.disk_names import module_name, to_disk
from core.models.export import export_config, save_weights, write_generation_config
from core.models.families import family_of
from core.quant import ct
from core.tracking import RunHandle, log_export
from jobs.quantize import checkpoint
from kernels.quant import QuantFormat


def write_export(model: Any, tokenizer: Any, blocks_root: str | Path, fmt: QuantFormat, ignore: list[str],
                 final: str, info: dict[str, Any], run: RunHandle,
                 per_module: dict[str, QuantFormat | None] | None = None, processor: Any = None,
                 modality_weights: dict[str, Any] | None = None, fp_modules: list[str] | tuple[str, ...] = (),
                 dtype: torch.dtype | None = None, log_exports: Any = "auto") -> str:
    """Write into a staging dir, log it to MLflow, then publish it as `final` atomically (local or s3://).
    `ignore`: Linears left FP; `fp_modules`: whole modules left FP (a VLM's vision tower and projector);
    `per_module`: mixed precision, Linear name -> its format (None: left FP); `dtype`: the export's (default: the
    model's), the input model's own so a bf16 model comes out bf16 after float32 calibration; `log_exports`:
    tracking.log_exports (core.tracking.log_export)."""
    dtype = dtype or next(model.parameters()).dtype
    lw, disk = Layerwise(model), to_disk(model)
    qconfig = ct.quantization_config(fmt, _ignore_list(model, ignore, fp_modules, disk),
                                     {_either(disk, k): v for k, v in (per_module or {}).items()})
    state = {k: _cast(v, dtype) for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # shared with the embedding; transformers re-ties on load
    smoothing: dict[str, torch.Tensor] = {}
    for index in range(len(lw.blocks)):
        prefix = lw.block_prefix(index)
        saved = checkpoint.load_block(checkpoint.block_dir(blocks_root, index))
        for name, layer in saved["layers"].items():
            full = f"{prefix}{name}"
            del state[f"{full}.weight"]
            qscheme = ct.scheme_of(qconfig, module_name(disk, full))
            if qscheme is None:
                raise ValueError(f"{full} was quantized but the export's config leaves it FP")
            packed = ct.compress(layer["qweight"], layer["scale"], layer["zero"], qscheme, dtype)
            state.update({f"{full}.{k}": v for k, v in packed.items()})
        state.update({f"{prefix}{k}": _cast(v, dtype) for k, v in saved["other"].items()})
        smoothing.update({f"{prefix}{k}": v for k, v in saved["smooth"].items()})
    staged = storage.staging_dir(final)
    save_weights({disk(k): v for k, v in sorted(state.items())}, staged)
    config = json.loads(model.config.to_json_string(use_diff=False))
    config.pop("quantization_config", None)
    config = export_config(config, tokenizer, dtype)
    (staged / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    ct.write_config(staged, qconfig)
    write_generation_config(staged, config, tokenizer)
    tokenizer.save_pretrained(staged)
    if processor is not None:
        processor.save_pretrained(str(staged))
    if modality_weights:
        (staged / "modality_weights.json").write_text(json.dumps(modality_weights, indent=2, sort_keys=True))
    if smoothing:
        save_file(dict(sorted(smoothing.items())), staged / "smoothing_scales.safetensors")
    (staged / "quant_info.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
    log_export(run, staged, final, log_exports)
    return storage.publish_dir(staged, final)


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def _either(disk: Any, name: str, tail: str = "") -> str:
    """A config entry for the module `name` by its names on disk and in memory (a VLM's differ: serving engines
    match the first, transformers the second); `tail`: a regex for what may follow (its submodules)."""
    names = dict.fromkeys([module_name(disk, name), name])
    if len(names) == 1 and not tail:
        return name
    return f"re:({'|'.join(re.escape(n) for n in names)}){tail}$"


def _ignore_list(model: Any, ignore: list[str], fp_modules: list[str] | tuple[str, ...], disk: Any) -> list[str]:
    """compressed-tensors' ignore entries: the Linears left FP, every Linear under the FP modules, and what the
    family's serving engines keep FP (MoE routers)."""
    family = family_of(model)
    whole = [_either(disk, m, tail="(\\..*)?") for m in fp_modules]
    return [*(_either(disk, n) for n in ignore), *whole, *(family.serving_fp if family is not None else ())]
