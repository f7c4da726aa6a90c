"""Mixture-of-experts blocks with one nn.Linear per expert projection.

Transformers 5 keeps a block's experts fused in memory (`experts.gate_up_proj` [E, 2I, H], `experts.down_proj`
[E, H, I]); checkpoints on disk, serving engines and compressed-tensors name each expert's Linears
(`experts.N.gate_proj`, `up_proj`, `down_proj`). `unfuse_experts(model)` swaps every fused experts module for an
`ExpertList` holding those Linears (views of the fused weights: no copy), so everything that works on Linears
(quantizers, their statistics hooks, sensitivity, the export's names) handles each expert as its own weight matrix.

Calibration sees rare experts too: with `all_tokens` on, every expert runs on every token (its Linears' hooks see
them all), while the block's output still follows the router (only routed tokens' results are combined, with their
routing weights). `routed` counts the tokens the router actually sent to each expert.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import torch
from torch import nn


class Expert(nn.Module):
    """One expert's gated MLP: down(glu(gate(x), up(x))); glu is act(gate) * up, or the fused module's own gate
    function of (gate, up) where it has one (gpt-oss: clamped, sigmoid-weighted, up + 1)."""

    def __init__(self, gate: tuple, up: tuple, down: tuple, act_fn: nn.Module | None, glu=None) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = _linear(*gate), _linear(*up), _linear(*down)
        self.act_fn, self.glu = act_fn, glu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.glu(gate, up) if self.glu is not None else self.act_fn(gate) * up)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias, requires_grad=False)
    return linear


class ExpertList(nn.ModuleList):
    """The experts of one block as a list (names `N.gate_proj` ...), called like the fused module it replaces:
    (hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k]) -> [T, H]."""

    def __init__(self, experts: list[Expert]) -> None:
        super().__init__(experts)
        self.all_tokens = False
        self.register_buffer("routed", torch.zeros(len(experts), dtype=torch.long), persistent=False)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        for index, expert in enumerate(self):
            top_k_pos, token_idx = torch.where((top_k_index == index).T)
            self.routed[index] += token_idx.numel()
            if self.all_tokens:
                y = expert(hidden_states)[token_idx]  # statistics from every token, output from the routed ones
            elif token_idx.numel():
                y = expert(hidden_states[token_idx])
            else:
                continue
            out.index_add_(0, token_idx, (y * top_k_weights[token_idx, top_k_pos, None]).to(out.dtype))
        return out


def _layout(module: nn.Module) -> str | None:
    """"stacked": gate_up_proj [E, 2I, H] (gate rows then up rows), down_proj [E, H, I] (Qwen3-MoE, Mixtral,
    DeepSeek-V3); "interleaved": gate_up_proj [E, H, 2I] applied as x @ W, gate and up in alternate columns, with
    biases, down_proj [E, I, H] (gpt-oss); None: not a fused experts module."""
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    if not (isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor) and gate_up.dim() == down.dim() == 3):
        return None
    if hasattr(module, "gate_up_proj_bias") and gate_up.shape[2] == 2 * down.shape[1]:
        return "interleaved"
    if gate_up.shape[1] == 2 * down.shape[2] and gate_up.shape[2] == down.shape[1]:
        return "stacked"
    return None


def unfuse(fused: nn.Module) -> ExpertList:
    """Per-expert Linears of a fused experts module: views of its weights where the layout allows (stacked: gate
    is rows [0, I) of gate_up_proj[e], up rows [I, 2I)), contiguous copies where it is transposed (interleaved)."""
    gate_up, down = fused.gate_up_proj.detach(), fused.down_proj.detach()
    if _layout(fused) == "stacked":
        inter = down.shape[2]
        return ExpertList([Expert((gate_up[e, :inter],), (gate_up[e, inter:],), (down[e],), fused.act_fn)
                           for e in range(gate_up.shape[0])])
    gate_up_bias, down_bias = fused.gate_up_proj_bias.detach(), fused.down_proj_bias.detach()
    experts = []
    for e in range(gate_up.shape[0]):
        gate = (gate_up[e, :, ::2].T.contiguous(), gate_up_bias[e, ::2].contiguous())
        up = (gate_up[e, :, 1::2].T.contiguous(), gate_up_bias[e, 1::2].contiguous())
        experts.append(Expert(gate, up, (down[e].T.contiguous(), down_bias[e]), None, glu=_interleaved_glu(fused)))
    return ExpertList(experts)


def _interleaved_glu(fused: nn.Module):
    """The fused module's own gate function (transformers' code, with its constants only: the fused weights are not
    kept alive), fed (gate, up) as it would slice them from its interleaved output."""
    apply_gate, constants = type(fused)._apply_gate, SimpleNamespace(alpha=fused.alpha, limit=fused.limit)

    def glu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return apply_gate(constants, torch.stack((gate, up), dim=-1).flatten(-2))

    return glu


def unfuse_experts(model: nn.Module) -> int:
    """Swap every fused experts module of `model` for an ExpertList; the number swapped (0: not an MoE model, or
    already done)."""
    found = [(name, module) for name, module in model.named_modules() if _layout(module) is not None]
    for name, module in found:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, unfuse(module))
    return len(found)


def expert_lists(model: nn.Module) -> Iterator[tuple[str, ExpertList]]:
    for name, module in model.named_modules():
        if isinstance(module, ExpertList):
            yield name, module


def calibrate_all_experts(model: nn.Module, on: bool = True) -> None:
    """Every expert runs on every token (statistics) while outputs follow the router; counts reset."""
    for _, experts in expert_lists(model):
        experts.all_tokens = on
        experts.routed.zero_()


@contextmanager
def routed_only(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside, each expert runs on the tokens routed to it only (an output error that follows the router, at a
    fraction of the all-token cost); the all-token setting (and the routed counts) are restored after."""
    lists = [experts for _, experts in expert_lists(model)] if enabled else []
    saved = [experts.all_tokens for experts in lists]
    for experts in lists:
        experts.all_tokens = False
    try:
        yield
    finally:
        for experts, on in zip(lists, saved, strict=True):
            experts.all_tokens = on
