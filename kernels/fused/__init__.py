"""Fused decoder-block ops for training (`trainer.fused_ops`): RMSNorm, the SwiGLU product and rotary
embedding are memory-bound chains of small kernels in eager PyTorch (an SFT step of Qwen3-1.7B on an H200
spent more GPU time in elementwise mul/copy kernels than in attention). `fuse_model` swaps them, module by
module, for the same math in kernels/fused/ops.py, compiled by torch.compile (or left eager: the reference).

One registry, keyed by module class name: an entry installs the fused forward on one module. Only classes
whose math the ops reproduce are registered (each is checked against its own forward in float64 by
tests/kernels/fused/test_fusions.py); anything else keeps its own forward.
"""

from __future__ import annotations

import sys
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from core.registry import Registry
from kernels.fused import ops


@dataclass(frozen=True)
class FusedOps:
    rms_norm: Callable
    silu_mul: Callable
    rotary: Callable


Installer = Callable[[nn.Module, FusedOps], bool]  # True when it changed something
FUSIONS: Registry[Installer] = Registry("fused module", "trainer.fused_ops")


@cache
def fused_ops(compiled: bool) -> FusedOps:
    """The ops, compiled once per process (recompiled per new input shape by torch.compile's guards)."""
    wrap = (lambda fn: torch.compile(fn, fullgraph=True)) if compiled else (lambda fn: fn)
    return FusedOps(wrap(ops.rms_norm), wrap(ops.silu_mul), wrap(ops.rotary))


def _norm_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    return self._fused_ops.rms_norm(hidden_states, self.weight, self.variance_epsilon)


def _gated_mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(self._fused_ops.silu_mul(self.gate_proj(x), self.up_proj(x)))


def install_rms_norm(module: nn.Module, fused: FusedOps) -> bool:
    module._fused_ops = fused
    module.forward = types.MethodType(_norm_forward, module)  # hooks (ZeRO-3 gathers) stay on __call__
    return True


def install_gated_mlp(module: nn.Module, fused: FusedOps) -> bool:
    if not isinstance(module.act_fn, nn.SiLU) and type(module.act_fn).__name__ != "SiLUActivation":
        return False  # a GELU-gated MLP keeps its own forward
    module._fused_ops = fused
    module.forward = types.MethodType(_gated_mlp_forward, module)
    return True


def install_rotary(module: nn.Module, fused: FusedOps) -> bool:
    """The attention classes call their modeling file's `apply_rotary_pos_emb` by global name: swap it there
    (once per modeling file, for the whole process: every model of that family in this worker)."""
    modeling = sys.modules[type(module).__module__]
    if getattr(modeling, "apply_rotary_pos_emb", None) is fused.rotary:
        return False
    modeling.apply_rotary_pos_emb = fused.rotary
    return True


for _family in ("Llama", "Mistral", "Qwen2", "Qwen3"):
    FUSIONS.register(f"{_family}RMSNorm", install_rms_norm)
    FUSIONS.register(f"{_family}MLP", install_gated_mlp)
    FUSIONS.register(f"{_family}Attention", install_rotary)


def fuse_model(model: nn.Module, compiled: bool = True) -> dict[str, int]:
    """Install the fused forward on every registered module of `model`; returns how many per class."""
    fused, counts = fused_ops(compiled), Counter()
    for module in model.modules():
        name = type(module).__name__
        if name in FUSIONS and FUSIONS.get(name)(module, fused):
            counts[name] += 1
    return dict(counts)
