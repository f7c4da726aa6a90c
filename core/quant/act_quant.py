"""Per-token dynamic int8 activation fake quant for evaluating W8A8 / W4A8 blocks on any device."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from kernels.quant import get_op


class ActQuantLinear(nn.Linear):
    """An nn.Linear whose input is fake-quantized per token; same parameter names, so a state dict
    (and an exporter) sees a plain Linear."""

    act_bits: int

    @classmethod
    def wrap(cls, linear: nn.Linear, act_bits: int = 8) -> ActQuantLinear:
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight = linear.weight  # share, do not copy
        new.bias = linear.bias
        new.act_bits = act_bits
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(get_op("fake_quant_per_token")(x, self.act_bits), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, act_bits={self.act_bits}"


def install_act_quant(block: nn.Module, names: list[str], act_bits: int = 8) -> None:
    """Swap the named Linears of `block` for ActQuantLinear, in place (idempotent)."""
    for name in names:
        module = block.get_submodule(name)
        if isinstance(module, ActQuantLinear):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = block.get_submodule(parent_name) if parent_name else block
        setattr(parent, child, ActQuantLinear.wrap(module, act_bits))


@contextmanager
def act_quant_inputs(linears: Iterable[nn.Linear], bits: int, scale: torch.Tensor | None = None) -> Iterator[None]:
    """While inside, the Linears see their inputs fake-quantized per token: Q_a(x), or Q_a(x / s) * s for a
    smoothing scale s (with weights Q(W s) / s they then compute Q_a(x / s) Q(W s)^T, the deployed W/A product after
    smoothing), formed in float32 and rounded back to x's dtype."""
    quant = get_op("fake_quant_per_token")

    def hook(_module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if scale is None:
            return (quant(x, bits), *args[1:])  # float32 inside, back in x's dtype
        sf = scale.to(x.device, torch.float32)
        return (quant(x.float() / sf, bits).mul_(sf).to(x.dtype), *args[1:])

    handles = [lin.register_forward_pre_hook(hook) for lin in linears]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
