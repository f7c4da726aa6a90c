"""Loss-delta scores (`search.score=loss_delta`): for each Linear and candidate format, how much the summed
next-token loss over the calibration tokens changes when that Linear alone is quantized (weights fake-quantized;
activations too for wNaM formats), the rest of the model unchanged. The gradient score estimates this change to
second order from one backward pass; this measures it, at one pass of the later blocks per (Linear, candidate,
batch). Each batch's block inputs come from one FP forward and are kept (as the gradient scorer keeps them), so a
Linear of block i reruns blocks i..N-1 only. A change can be negative (the format happens to fit the calibration
data better); the search takes it as it is. Sums over tokens, so shards of batches add up as for the gradient.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from core.blocks.backward import LOGITS_CHUNK, BlockBatch, Place, batch_of_ids, forward_keeping_inputs
from core.blocks.layerwise import BlockCalls, Layerwise
from core.quant.act_quant import act_quant_inputs
from kernels.quant import QuantFormat, get_op, parse_target


def summed_loss(norm: nn.Module, head: nn.Module, h: torch.Tensor, targets: torch.Tensor,
                chunk: int = LOGITS_CHUNK) -> torch.Tensor:
    """The next-token cross entropy summed over tokens (IGNORE = -100 targets excluded) of head(norm(h)), in
    float64, the logits formed a chunk of tokens at a time in float32 (float64 for a float64 model)."""
    feats = norm(h)[:, :-1].reshape(-1, h.shape[-1])
    labels = targets[:, 1:].reshape(-1)
    step = max(1, chunk // head.out_features)
    dtype = torch.promote_types(feats.dtype, torch.float32)
    # per-token losses summed in float64: a chunk's float32 sum (~1e4 nats) would blur the small differences scored
    return sum(nn.functional.cross_entropy(head(feats[s:s + step]).to(dtype), labels[s:s + step],
                                           reduction="none").double().sum() for s in range(0, len(labels), step))


@contextmanager
def quantized(linear: nn.Linear, fmt: QuantFormat) -> Iterator[None]:
    """`linear` computing as its quantized self: fake-quantized weights (in their own dtype) and, for formats with
    activation bits, per-token fake-quantized inputs; restored on exit."""
    weight = linear.weight.data
    linear.weight.data = get_op("fake_quant")(weight.float(), fmt).to(weight.dtype)
    try:
        with act_quant_inputs([linear], fmt.act_bits) if fmt.act_bits else nullcontext():
            yield
    finally:
        linear.weight.data = weight


@torch.no_grad()
def loss_delta_scores(model: nn.Module, linears: dict[str, nn.Linear], candidates: list[str],
                      batches: Iterable[torch.Tensor | BlockBatch], chunk: int = LOGITS_CHUNK,
                      place: Place | None = None) -> dict[str, dict[str, float]]:
    """Loss change per Linear of `linears` (decoder-block Linears) and candidate, summed over `batches` (token ids
    or BlockBatch); unquantized candidates score 0. `place`: as score_batches' (a model larger than the GPU)."""
    place = place or (lambda _block: nullcontext())
    lw = Layerwise(model)
    norm, head = lw.final_norm(), model.get_output_embeddings()
    prefixes = [lw.block_prefix(i) for i in range(len(lw.blocks))]
    block_of = {name: next(i for i, p in enumerate(prefixes) if name.startswith(p)) for name in linears}
    formats = {c: parse_target(c) for c in candidates}
    sums = {name: {c: 0.0 for c in candidates} for name in linears}

    def loss_from(index: int, h: torch.Tensor, calls: BlockCalls, targets: torch.Tensor) -> torch.Tensor:
        for i in range(index, len(lw.blocks)):
            with place(lw.blocks[i]):
                h = lw.run_block(i, h, calls)
        return summed_loss(norm, head, h, targets, chunk)

    for batch in batches:
        b = batch if isinstance(batch, BlockBatch) else batch_of_ids(lw, batch)
        targets = b.ids if b.targets is None else b.targets
        inputs, out = forward_keeping_inputs(lw, b, place)
        base = summed_loss(norm, head, out, targets, chunk)
        for name, linear in linears.items():
            for cand, fmt in formats.items():
                if fmt is not None:
                    with quantized(linear, fmt):
                        sums[name][cand] += float(loss_from(block_of[name], inputs[block_of[name]], b.calls, targets)
                                                  - base)
    return sums
