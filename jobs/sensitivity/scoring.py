"""Gradient-based sensitivity (the Fisher/Taylor estimate NVIDIA ModelOpt's AutoQuant uses): for a Linear
with inputs X, outputs Y and loss gradient G = dL/dY, quantizing it to format f changes Y by
dY = Q_a(X) Q_f(W)^T - X W^T, and the loss by about sum_tokens (G . dY)^2 (second order, Fisher).

Per batch, the model runs block by block so that an 8B model fits one GPU with little more than its
weights: a no-grad forward keeps only each block's input; the loss gradient at the last block's output
comes from the final norm and lm_head over chunks of tokens (never the whole float32 logits); then, from
the last block down, each block is recomputed with grad and back-propagated alone, and each of its
Linears is scored in its backward hook, given its output and input gradients (its X is dropped right after).
Weights are frozen, so the backward computes input gradients only. Q_f(W) is recomputed in the hook for every
batch rather than cached for the whole model (2 candidates x 16 GB for an 8B model).

dY is formed from small terms, never as the difference of two full outputs (bf16 outputs cannot resolve
an int8 change). With dW = Q(W) - W and dx = Q_a(X) - X (formed in float32), per token
G . dY = G . (Q_a(X) dW^T) + (G W) . dx, and G W is the Linear's input gradient, which the backward computes
anyway (a full backward hook hands it over): one GEMM per candidate, contracted over the smaller side (in or
out features), the dot products in float32, their squares added in float64. The loss is summed over tokens, not
averaged, so scores of batches split over workers add up to the scores of one worker.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from core.blocks.backward import LOGITS_CHUNK, BlockBatch, Place, backward_by_block, batch_of_ids
from core.blocks.layerwise import Layerwise
from kernels.quant import QuantFormat, get_op, parse_target


class LinearScorer:
    """Scores of every candidate for a set of Linears, accumulated over batches."""

    def __init__(self, linears: dict[str, nn.Linear], candidates: list[str]) -> None:
        self.linears, self.candidates = linears, candidates
        self.formats = {c: parse_target(c) for c in candidates}
        self._sums: dict[str, torch.Tensor] = {}  # name -> float64 [candidates] on the weights' device

    @property
    def scores(self) -> dict[str, dict[str, float]]:
        zeros = [0.0] * len(self.candidates)
        return {name: dict(zip(self.candidates, self._sums[name].tolist() if name in self._sums else zeros,
                               strict=True)) for name in self.linears}

    @torch.no_grad()
    def score(self, name: str, x: torch.Tensor, grad: torch.Tensor, input_grad: torch.Tensor) -> None:
        """Add one batch: the Linear's input `x`, output gradient `grad` and input gradient `input_grad` (G W)."""
        w = self.linears[name].weight.detach()
        x2, g2, gx2 = (t.reshape(-1, t.shape[-1]) for t in (x, grad, input_grad))
        sums = self._sums.setdefault(name, torch.zeros(len(self.candidates), dtype=torch.float64, device=w.device))
        for k, fmt in enumerate(self.formats.values()):
            if fmt is not None:  # unquantized: dY = 0
                sums[k] += token_products(g2, x2, gx2, w, fmt).double().square().sum()


def token_products(g: torch.Tensor, x: torch.Tensor, input_grad: torch.Tensor, w: torch.Tensor,
                   fmt: QuantFormat) -> torch.Tensor:
    """Per token g . dY (float32), dY = Q_a(x) Q_f(W)^T - x W^T, as g . (Q_a(x) dW^T) + (g W) . dx with
    `input_grad` = g W. The dW term is contracted over the smaller of in/out features: (g dW) . Q_a(x) when
    in < out, else g . (Q_a(x) dW^T): the same GEMM FLOPs, the smaller float32 product."""
    dw = get_op("weight_quant_delta")(w, fmt)  # float32 inside (fused on CUDA)
    dx = get_op("per_token_quant_delta")(x, fmt.act_bits) if fmt.act_bits else None  # float32 inside (fused on CUDA)
    act_term = None if dx is None else _rowdot(input_grad, dx)
    out_features, in_features = w.shape
    if in_features < out_features:
        u = g @ dw
        products = _rowdot(u, x) if dx is None else _rowdot(u, x) + _rowdot(u, dx)
    else:  # Q_a(x) in place of dx: one [tokens, in] temporary fewer (0.9 GiB for an 8B down_proj at 32k tokens)
        products = _rowdot(g, (x if dx is None else dx.add_(x)) @ dw.T)
    return products if act_term is None else products + act_term


def _rowdot(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return get_op("rowdot")(p, q)  # float32 sums (one fused read of each row on CUDA)


def score_batches(model: nn.Module, scorer: LinearScorer, batches: Iterable[torch.Tensor | BlockBatch],
                  chunk: int = LOGITS_CHUNK, place: Place | None = None) -> None:
    """The summed causal-LM loss per batch (token ids, or a BlockBatch), back-propagated block by block,
    scoring each decoder-block Linear of `scorer` as its output gradient arrives (`place`: backward_by_block's)."""
    model.requires_grad_(False)
    lw = Layerwise(model)
    norm, head = lw.final_norm(), model.get_output_embeddings()
    saved: dict[str, torch.Tensor] = {}

    def keep_input(name: str):
        def hook(_m: nn.Module, args: tuple, _out: torch.Tensor) -> None:
            if torch.is_grad_enabled():  # a block's recompute; the first forward keeps nothing
                saved[name] = args[0].detach()
        return hook

    def score_on_backward(name: str):
        def hook(_m: nn.Module, grad_input: tuple, grad_output: tuple) -> None:
            scorer.score(name, saved.pop(name), grad_output[0], grad_input[0])
        return hook

    handles = [h for name, lin in scorer.linears.items() for h in (
        lin.register_forward_hook(keep_input(name)), lin.register_full_backward_hook(score_on_backward(name)))]
    try:
        for batch in batches:
            b = batch if isinstance(batch, BlockBatch) else batch_of_ids(lw, batch)
            backward_by_block(lw, norm, head, b, chunk, place=place)
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
