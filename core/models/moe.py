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

import torch
from torch import nn


class Expert(nn.Module):
    """One expert's gated MLP: down(act(gate(x)) * up(x))."""

    def __init__(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, act_fn: nn.Module) -> None:
        super().__init__()
        self.gate_proj = _linear(gate)
        self.up_proj = _linear(up)
        self.down_proj = _linear(down)
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def _linear(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=weight.requires_grad)
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


def _is_fused(module: nn.Module) -> bool:
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return (isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor) and gate_up.dim() == 3
            and not hasattr(module, "gate_up_proj_bias")  # gpt-oss's layout (transposed, interleaved, biased)
            and gate_up.shape[1] == 2 * down.shape[2] and gate_up.shape[2] == down.shape[1])


def unfuse(fused: nn.Module) -> ExpertList:
    """Per-expert Linears viewing the fused weights: gate = rows [0, I), up = rows [I, 2I) of gate_up_proj[e]."""
    inter = fused.down_proj.shape[2]
    gate_up, down = fused.gate_up_proj.detach(), fused.down_proj.detach()  # views: the Linears share the storage
    return ExpertList([Expert(gate_up[e, :inter], gate_up[e, inter:], down[e],
                              fused.act_fn) for e in range(gate_up.shape[0])])


def unfuse_experts(model: nn.Module) -> int:
    """Swap every fused experts module of `model` for an ExpertList; the number swapped (0: not an MoE model, or
    already done)."""
    found = [(name, module) for name, module in model.named_modules() if _is_fused(module)]
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
