"""Fused decoder-block ops for training (`trainer.fused_ops`): RMSNorm, the SwiGLU product and rotary
embedding are memory-bound chains of small kernels in eager PyTorch (the profile of an SFT step of Qwen3-1.7B on
an H200 put more GPU time in elementwise mul/copy kernels than in attention). `fuse_model` swaps them, module by
module, for the same math in kernels/fused/ops.py, compiled by torch.compile (or left eager: the reference).

Which module classes take which fused op is the model family's (core/models/families/: `Family.fused_ops`, class
name -> op kind), handed to `fuse_model`; only classes of transformers' own modeling files are fused (a
trust_remote_code copy with the same name may compute something else). `INSTALLERS` installs the fused forward of
one op kind on one module. Each family's classes are checked against their own forward by
tests/kernels/fused/test_fusions.py; anything else keeps its own forward.
"""

from __future__ import annotations

import logging
import sys
import types
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn
from transformers.activations import SiLUActivation

from kernels.fused import ops

log = logging.getLogger("kernels.fused")


@dataclass(frozen=True)
class FusedOps:
    rms_norm: Callable
    silu_mul: Callable
    rotary: Callable
    cross_entropy_sum: Callable  # the SFT loss's (jobs/sft/chunked_loss.py), not installed on any module


Installer = Callable[[nn.Module, FusedOps], bool]  # True when it installed something on this module
_OWN_MODELING = "transformers.models."


@cache
def fused_ops(compiled: bool) -> FusedOps:
    """The ops, compiled once per process. Not fullgraph: past torch.compile's recompile limit (hidden and
    per-head norms, changing batch shapes) a function falls back to eager instead of failing the step."""
    wrap = torch.compile if compiled else (lambda fn: fn)
    return FusedOps(wrap(ops.rms_norm), wrap(ops.silu_mul), wrap(ops.rotary), wrap(ops.cross_entropy_sum))


def compiler_works(device: torch.device) -> bool:
    """Whether torch.compile can build a kernel on `device` here (Triton needs a C compiler and Python's headers
    at first use); a throwaway function, so the real ops' compiled shapes are not touched."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(8, device=device))
        return True
    except Exception as err:  # noqa: BLE001 (any toolchain failure means: do not compile)
        log.warning("torch.compile does not work on %s here (%s): fused ops stay off", device,
                    str(err).splitlines()[0] if str(err) else type(err).__name__)
        return False


def _norm_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    return self._fused_ops.rms_norm(hidden_states, self.weight, self.variance_epsilon)


def _gated_mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(self._fused_ops.silu_mul(self.gate_proj(x), self.up_proj(x)))


def install_rms_norm(module: nn.Module, fused: FusedOps) -> bool:
    module._fused_ops = fused
    module.forward = types.MethodType(_norm_forward, module)  # hooks (ZeRO-3 gathers) stay on __call__
    return True


def install_gated_mlp(module: nn.Module, fused: FusedOps) -> bool:
    if not isinstance(module.act_fn, nn.SiLU | SiLUActivation):
        return False  # a GELU-gated MLP keeps its own forward
    module._fused_ops = fused
    module.forward = types.MethodType(_gated_mlp_forward, module)
    return True


def install_rotary(module: nn.Module, fused: FusedOps) -> bool:
    """The attention classes call their modeling file's `apply_rotary_pos_emb` by global name: swap it there,
    once per modeling file and for the whole process (every model of that family in this worker; not undone)."""
    modeling = sys.modules[type(module).__module__]
    current = getattr(modeling, "apply_rotary_pos_emb", None)
    if current is None or current is fused.rotary:
        return False
    modeling.apply_rotary_pos_emb = fused.rotary
    return True


INSTALLERS: dict[str, Installer] = {"rms_norm": install_rms_norm, "gated_mlp": install_gated_mlp,
                                    "rotary": install_rotary}


def fuse_model(model: nn.Module, classes: Mapping[str, str], fused: FusedOps | None = None) -> dict[str, int]:
    """Install the fused forward on every module of `model` whose class `classes` names (class name -> op kind of
    INSTALLERS; the compiled ops unless `fused` is given); returns how many per class."""
    fused, counts = fused or fused_ops(compiled=True), Counter()
    for module in model.modules():
        cls = type(module)
        kind = classes.get(cls.__name__)
        if kind and cls.__module__.startswith(_OWN_MODELING) and INSTALLERS[kind](module, fused):
            counts[cls.__name__] += 1
    return dict(counts)
