"""Gradient-based sensitivity (the Fisher/Taylor estimate NVIDIA ModelOpt's AutoQuant uses): for a Linear
with inputs X, outputs Y and loss gradient G = dL/dY, quantizing it to format f changes Y by
dY = Q_a(X) Q_f(W)^T - X W^T, and the loss by about sum_tokens (G . dY)^2 (second order, Fisher).

One forward + backward per batch gives every Linear's X and G at once: the weights are frozen, the
embedding output requires grad, and a hook on each Linear's output scores all candidates as its
gradient arrives (X is dropped right after). The loss is summed over tokens, not averaged, so scores of
batches split over workers add up to the scores of one worker. Scores accumulate in float64.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from kernels.quant import get_op, parse_target


class LinearScorer:
    """Scores of every candidate for a set of Linears, accumulated over batches."""

    def __init__(self, linears: dict[str, nn.Linear], candidates: list[str]) -> None:
        self.linears, self.candidates = linears, candidates
        self.formats = {c: parse_target(c) for c in candidates}
        self.scores = {name: {c: 0.0 for c in candidates} for name in linears}
        self._deltas: dict[tuple[str, str], torch.Tensor] = {}

    def _weight_delta(self, name: str, cand: str) -> torch.Tensor:
        """Q_f(W) (cached: the weights do not change while scoring)."""
        key = (name, cand)
        if key not in self._deltas:
            w = self.linears[name].weight.detach()
            self._deltas[key] = get_op("fake_quant")(w.float(), self.formats[cand]).to(w.dtype)
        return self._deltas[key]

    @torch.no_grad()
    def score(self, name: str, x: torch.Tensor, grad: torch.Tensor) -> None:
        lin = self.linears[name]
        g = grad.reshape(-1, grad.shape[-1]).float()
        x2 = x.reshape(-1, x.shape[-1])
        y2 = nn.functional.linear(x2, lin.weight, lin.bias).float()  # recomputed: outputs are not kept
        for cand, fmt in self.formats.items():
            if fmt is None:
                continue  # unquantized: dY = 0
            xq = get_op("fake_quant_per_token")(x2, fmt.act_bits) if fmt.act_bits else x2
            yq = nn.functional.linear(xq, self._weight_delta(name, cand), lin.bias).float()
            per_token = (g * (yq - y2)).sum(-1)
            self.scores[name][cand] += per_token.double().square().sum().item()


def score_batches(model: nn.Module, embed: nn.Module, scorer: LinearScorer, batches: Iterable[torch.Tensor]) -> None:
    """Forward + backward of the summed causal-LM loss per batch, scoring each Linear in its grad hook."""
    model.requires_grad_(False)
    saved: dict[str, torch.Tensor] = {}

    def on_forward(name: str):
        def hook(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            saved[name] = args[0].detach()
            out.register_hook(lambda g: scorer.score(name, saved.pop(name), g))
        return hook

    handles = [lin.register_forward_hook(on_forward(name)) for name, lin in scorer.linears.items()]
    handles.append(embed.register_forward_hook(lambda _m, _a, out: out.requires_grad_(True)))
    try:
        for ids in batches:
            logits = model(input_ids=ids, use_cache=False).logits
            loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(),
                                               reduction="sum")
            loss.backward()
            del logits, loss
    finally:
        for h in handles:
            h.remove()


def reduce_scores(parts: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per-worker score sums added in a fixed order (workers, then names): deterministic."""
    out: dict[str, dict[str, float]] = {}
    for part in parts:
        for name in sorted(part):
            for cand, value in part[name].items():
                out.setdefault(name, {}).setdefault(cand, 0.0)
                out[name][cand] += value
    return out


def group_scores(scores: dict[str, dict[str, float]], groups: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Handle score = sum of its Linears' scores (each quantized alone: interactions are second order)."""
    return {handle: {c: sum(scores[m][c] for m in members) for c in scores[members[0]]}
            for handle, members in groups.items()}


def linear_shapes(model: nn.Module, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    return {n: (model.get_submodule(n).out_features, model.get_submodule(n).in_features) for n in names}


def model_linears(model: nn.Module, block_prefixes: list[str]) -> dict[str, Any]:
    return {name: mod for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and any(name.startswith(p) for p in block_prefixes)}
