"""The compressed-tensors library as the project's quantized format: schemes, config, packing, unpacking.

Calibration produces, per quantized Linear, integers q in the signed range, scales and zero points with
dequant = (q - zero) * scale (kernels/quant/formats.py: the library's convention). Writing goes through the library's
own compressor for the scheme's format (pack-quantized for weight-only, int-quantized with int8 activations: the
library picks, as vLLM expects), reading through its decompressor, so both ends are the library's code.

Scales are stored in the export's dtype, as transformers and vLLM allocate them (a bf16 model: bf16 scales); the
weight handed to the compressor is (q - zero) * stored scale, which it rounds back to exactly q."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kernels.quant import QuantFormat, get_op

QUANT_TENSORS = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point")


def scheme(fmt: QuantFormat, targets: list[str]) -> Any:
    """The library's QuantizationScheme for `fmt`, its storage format chosen by the library."""
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(num_bits=fmt.weight_bits, type="int", symmetric=fmt.symmetric,
                               strategy="group" if fmt.group_size else "channel", group_size=fmt.group_size)
    acts = None
    if fmt.act_bits:  # dynamic per-token int8, symmetric: nothing to store
        acts = QuantizationArgs(num_bits=fmt.act_bits, type="int", symmetric=True, strategy="token", dynamic=True)
    out = QuantizationScheme(targets=targets, weights=weights, input_activations=acts)
    out.format = infer_module_format(nn.Linear, out).value
    return out


def quantization_config(default: QuantFormat, ignore: list[str], per_module: dict[str, QuantFormat | None]) -> Any:
    """One group targeting every Linear; with mixed precision (`per_module`: name -> format, None = left FP) first
    one group per format targeting its Linears by name (a name outranks a class in the library's and vLLM's
    matching), the FP ones added to `ignore`, then the default for the Linears the recipe does not name."""
    from compressed_tensors.config import CompressionFormat
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus

    if per_module:
        by_format: dict[QuantFormat, list[str]] = {}
        for name, fmt in sorted(per_module.items()):
            if fmt is not None:
                by_format.setdefault(fmt, []).append(name)
        schemes = [scheme(fmt, names) for fmt, names in by_format.items()]
        ignore = [*ignore, *sorted(n for n, f in per_module.items() if f is None)]
    else:
        schemes = []
    schemes.append(scheme(default, ["Linear"]))
    formats = {s.format for s in schemes}
    overall = formats.pop() if len(formats) == 1 else CompressionFormat.mixed_precision.value
    return QuantizationConfig(config_groups={f"group_{i}": s for i, s in enumerate(schemes)}, format=overall,
                              quantization_status=QuantizationStatus.COMPRESSED, ignore=list(ignore))


def _compressor(fmt_name: str) -> Any:
    from compressed_tensors.compressors import BaseCompressor

    return BaseCompressor.get_value_from_registry(fmt_name)


def compress(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qscheme: Any,
             dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One Linear's tensors as the library stores them (local names: weight_packed, weight_scale, ...)."""
    stored = scale.to(dtype)
    group = qscheme.weights.group_size
    weight = get_op("dequantize")(q, stored.float(), zero.float(), group)
    state = {"weight": weight, "weight_scale": stored}
    if not qscheme.weights.symmetric:
        state["weight_zero_point"] = zero.to(qscheme.weights.zp_dtype)
    return _compressor(qscheme.format).compress(state, qscheme)


def write_config(directory: str | Path, qconfig: Any) -> None:
    """Add the quantization config (with the library's version field) to `directory`/config.json."""
    from compressed_tensors.compressors import ModelCompressor

    ModelCompressor(quantization_config=qconfig).update_config(str(directory))


def read_config(config: dict[str, Any]) -> Any | None:
    """The QuantizationConfig of a model config dict; None: not a compressed-tensors model."""
    from compressed_tensors.quantization import QuantizationConfig

    qc = config.get("quantization_config")
    if not qc or qc.get("quant_method") != "compressed-tensors":
        return None
    return QuantizationConfig.model_validate({k: v for k, v in qc.items() if k in QuantizationConfig.model_fields})


def scheme_of(qconfig: Any, module: str) -> Any | None:
    """The config group's scheme that quantizes the Linear `module` (None: ignored or untargeted)."""
    from compressed_tensors.utils import is_match

    linear = _LINEAR
    for group in qconfig.config_groups.values():
        if is_match(module, linear, group.targets, qconfig.ignore or ()):
            return group
    return None


_LINEAR = nn.Linear(1, 1, device="meta")  # a module of class Linear for the library's class-name targets


def quantized_modules(tensors: Iterable[str]) -> list[str]:
    """Module names that have quantization tensors (their weight scale)."""
    return sorted({k.rpartition(".")[0] for k in tensors if k.endswith(".weight_scale")})


def decompress(tensors: dict[str, torch.Tensor], qconfig: Any, dtype: torch.dtype | None = None,
               rename: Callable[[str], str] = lambda name: name) -> dict[str, torch.Tensor]:
    """Every quantized Linear's tensors replaced by its dequantized `weight` (the library's decompressor), computed
    in `dtype` (default: the stored scales'), as transformers does for a model loaded in that dtype; `rename`: a
    tensor's name -> the name its scheme's targets use (the config names what is on disk)."""
    out = dict(tensors)
    for module in quantized_modules(tensors):
        local = {k: out.pop(f"{module}.{k}") for k in QUANT_TENSORS if f"{module}.{k}" in out}
        if dtype is not None:
            local["weight_scale"] = local["weight_scale"].to(dtype)
        if f"{module}.weight" in out:
            local["weight"] = out.pop(f"{module}.weight")  # int-quantized: the int8 weight itself
        qscheme = scheme_of(qconfig, rename(module))
        if qscheme is None:
            raise ValueError(f"{module}: quantized tensors but no config group targets it")
        fmt_name = qscheme.format or qconfig.format
        out[f"{module}.weight"] = _compressor(fmt_name).decompress(local, qscheme)["weight"]
    return out


def act_bits_of(qscheme: Any) -> int | None:
    acts = qscheme.input_activations
    return acts.num_bits if acts is not None else None
