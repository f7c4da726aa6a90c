"""`trainer.precision`: default (the Linears' matmuls in the training dtype, bf16 or float32 by `trainer.bf16`) or
fp8: torchao's float8 training on the decoder blocks' Linears (their matmuls in float8 with `trainer.fp8_scaling`
rowwise or tensorwise scales, master weights, gradients and optimizer state as before); lm_head, the embeddings, a
VLM's vision tower and projector stay in bf16. Float8 matmuls need CUDA tensor cores of compute capability 8.9 or
more (Ada, Hopper and later): anything else is refused with one error line before training starts."""

from __future__ import annotations

import types
from functools import cache
from typing import Any

import torch
from torch import nn

from core.errors import ConfigError

PRECISIONS = ("default", "fp8")
FP8_SCALINGS = ("rowwise", "tensorwise")
FP8_MIN_CAPABILITY = (8, 9)
FP8_ALIGN = 16  # float8 GEMMs take dimensions that are multiples of 16


def check_precision(t: Any) -> None:
    """What the spec alone decides (before anything starts)."""
    if t.precision not in PRECISIONS:
        raise ConfigError("trainer.precision", f"must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    if t.fp8_scaling not in FP8_SCALINGS:
        raise ConfigError("trainer.fp8_scaling", f"must be one of {', '.join(FP8_SCALINGS)}, got {t.fp8_scaling!r}")
    if t.precision == "fp8" and str(t.use_gpu).lower() == "false":
        raise ConfigError("trainer.precision", "fp8 trains on CUDA workers only (trainer.use_gpu=false)")
    if t.precision == "fp8" and str(t.bf16).lower() == "false":
        raise ConfigError("trainer.precision", "fp8 runs the blocks' matmuls in float8 around bf16 weights: it "
                                               "needs trainer.bf16 auto or true")


def check_precision_on(t: Any, use_gpu: bool) -> None:
    """What the cluster decides: fp8 with workers that resolved to CPUs."""
    if t.precision == "fp8" and not use_gpu:
        raise ConfigError("trainer.precision", "fp8 trains on CUDA workers only, and this cluster has no GPU "
                                               "(trainer.use_gpu=auto resolved to CPU workers)")


def fp8_linears(model: nn.Module, blocks: str) -> list[str]:
    """The Linears that train in float8: those inside the decoder blocks (`blocks`, the ModuleList's path) whose
    both dimensions are multiples of 16."""
    prefix = f"{blocks}."
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name.startswith(prefix)
            and module.in_features % FP8_ALIGN == 0 and module.out_features % FP8_ALIGN == 0]


def fp8_token_multiple(t: Any) -> int:
    """fp8: a micro-batch's token count must be a multiple of FP8_ALIGN (the weight gradient's GEMM runs over the
    tokens); 1 otherwise."""
    return FP8_ALIGN if t.precision == "fp8" else 1


def apply_precision(model: nn.Module, t: Any, device: torch.device) -> int:
    """Convert the model for `t.precision` (before the DeepSpeed engine wraps it); the number of float8 Linears."""
    if t.precision != "fp8":
        return 0
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < FP8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "a CPU"
        raise ConfigError("trainer.precision", f"fp8 needs a GPU of compute capability 8.9 or more, this worker "
                                               f"has {name}")
    chosen = to_float8(model, t.fp8_scaling)
    from kernels.fused import compiler_works

    if compiler_works(device):
        compile_float8(model)
    return len(chosen)


def to_float8(model: nn.Module, scaling: str) -> list[str]:
    """Swap the decoder blocks' Linears (fp8_linears) for torchao's Float8Linear with `scaling`'s recipe; their
    names."""
    from core.blocks.layerwise import find_blocks
    from core.models.families import family_of

    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError:
        raise ConfigError("trainer.precision", "fp8 needs torchao on the workers: pip install '.[fp8]' (pyproject "
                                               "pins the version)") from None
    chosen = fp8_linears(model, find_blocks(model, family_of(model)))
    wanted = set(chosen)
    convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name(scaling),
                               module_filter_fn=lambda _module, fqn: fqn in wanted)
    return chosen


@cache
def _float8_matmul() -> Any:
    """torchao's float8 matmul (scales, casts, the scaled GEMM, its backward), compiled once per process: eager,
    each cast and amax is its own pass over the activations. No module and no hook inside: ZeRO-3's gathers stay
    on the modules' __call__; one graph per weight shape (a block has four or five)."""
    from torchao.float8.float8_linear import matmul_with_hp_or_float8_args

    def matmul(x: torch.Tensor, weight: torch.Tensor, mm_config: Any, config: Any) -> torch.Tensor:
        return matmul_with_hp_or_float8_args.apply(x, weight.t(), mm_config, config)

    return torch.compile(matmul, dynamic=False)


def _float8_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # torchao's forward first casts to the autocast dtype; DeepSpeed's bf16 runs no autocast, so nothing to cast
    out = _float8_matmul()(x, self.weight, self.linear_mm_config, self.config)
    return out if self.bias is None else out + self.bias.to(out.dtype)


def compile_float8(model: nn.Module) -> int:
    """Give every torchao Float8Linear of `model` the compiled forward; they share one matmul config so the
    compiled graphs are reused across modules. How many."""
    from torchao.float8.float8_linear import Float8Linear

    linears = [m for m in model.modules() if isinstance(m, Float8Linear)]
    for module in linears:
        module.linear_mm_config = linears[0].linear_mm_config
        module.forward = types.MethodType(_float8_forward, module)
    return len(linears)
