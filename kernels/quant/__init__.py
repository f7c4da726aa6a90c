"""Format-level quantization ops (and `rowdot`, the reduction that scores a format's error). `get_op(name)` picks a
fused implementation at run time when one is available (`kernels.quant.triton_ops`, CUDA only) and the torch
reference otherwise, so callers never import a backend directly. Importing this package imports no torch (formats
are plain Python: a driver validates them before it pays for the ML stack); an op's first get_op does."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from functools import cache

from kernels.quant.formats import UNQUANTIZED, QuantFormat, check_group_size, parse_format, parse_target

OPS = ("compute_qparams", "quantize", "dequantize", "quantize_weight", "fake_quant", "weight_quant_delta",
       "fake_quant_per_token", "per_token_quant_delta", "rowdot", "gptq_block")
BACKENDS = ("auto", "torch", "triton")
_TRITON_MODULE = "kernels.quant.triton_ops"  # same function names and signatures as reference


def get_op(name: str, backend: str = "auto") -> Callable:
    """The implementation of op `name`: "auto" prefers Triton on CUDA, else the torch reference; the environment's
    QUANT_BACKEND=torch makes "auto" the reference everywhere (to bisect a kernel, or time what one buys)."""
    if backend == "auto":
        backend = os.environ.get("QUANT_BACKEND", "auto")
        if backend not in BACKENDS:
            raise KeyError(f"QUANT_BACKEND={backend!r} is not a quant backend (known: {', '.join(BACKENDS)})")
    if name not in OPS:
        raise KeyError(f"unknown quant op {name!r} (known: {', '.join(OPS)})")
    if backend not in BACKENDS:
        raise KeyError(f"unknown quant backend {backend!r} (known: {', '.join(BACKENDS)})")
    if backend != "torch":
        fused = getattr(_triton_module(), name, None) if _triton_usable() else None
        if fused is not None:
            return fused
        if backend == "triton":
            raise RuntimeError(f"no Triton implementation of {name!r} here (needs triton, CUDA and "
                               f"{_TRITON_MODULE})")
    return getattr(importlib.import_module("kernels.quant.reference"), name)


@cache
def _triton_usable() -> bool:
    try:
        import torch
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() and _triton_module() is not None


@cache
def _triton_module():
    try:
        return importlib.import_module(_TRITON_MODULE)
    except ModuleNotFoundError as err:
        if err.name != _TRITON_MODULE:
            raise  # the module exists but is broken: say so rather than silently fall back
        return None


__all__ = ["OPS", "UNQUANTIZED", "QuantFormat", "check_group_size", "get_op", "parse_format", "parse_target"]
