"""Deterministic batch plan: which packed rows each rank sees at each step, resumable by step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from core.data.multimodal import model_image_inputs
from core.data.packing import PackedRow
from core.data.tokenize import IGNORE


@dataclass
class MicroBatch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    tokens: int  # real (non-pad) tokens
    targets: int  # label tokens that count in the loss (after the causal shift)
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # the model's image inputs (pixel_values, ...)
    shifted: bool = False  # labels[t] is token t's target already (a sequence-parallel shard's): no causal shift

    def to(self, device: torch.device) -> MicroBatch:
        move = dict(non_blocking=True)
        return MicroBatch(self.input_ids.to(device, **move), self.labels.to(device, **move),
                          self.position_ids.to(device, **move), self.tokens, self.targets,
                          {k: v.to(device, **move) for k, v in self.images.items()}, self.shifted)


def image_filler(rows: list[PackedRow]) -> PackedRow | None:
    """A row holding one image of the data and nothing to learn, for micro-batches without images when
    the data has some: under ZeRO-3 every rank must run the vision tower in every forward (its
    parameter gathers and gradient reduce-scatters are collectives); its loss contribution is zero."""
    row = next((r for r in rows if r.images), None)
    if row is None:
        return None
    span = row.images[0]
    ids = row.input_ids[span.start : span.stop]
    return PackedRow(ids, np.full(len(ids), IGNORE, np.int32), np.arange(len(ids), dtype=np.int32), 0,
                     [span.shifted(-span.start)])


def collate(rows: list[PackedRow], pad_id: int, pad_to: int | None = None,
            filler: PackedRow | None = None) -> MicroBatch:
    """Pad to the longest row (or `pad_to`); padding is its own position-restarting span with no loss.
    `filler` (image_filler) is appended as an extra row when no row has an image."""
    real_tokens = int(sum(len(r) for r in rows))
    if filler is not None and not any(r.images for r in rows):
        rows = [*rows, filler]
    length = max(pad_to or 0, *(len(r) for r in rows))
    ids = np.full((len(rows), length), pad_id, np.int64)
    labels = np.full((len(rows), length), IGNORE, np.int64)
    positions = np.zeros((len(rows), length), np.int64)
    for i, row in enumerate(rows):
        n = len(row)
        ids[i, :n], labels[i, :n], positions[i, :n] = row.input_ids, row.labels, row.position_ids
        positions[i, n:] = np.arange(length - n)
    targets = int((labels[:, 1:] != IGNORE).sum())
    return MicroBatch(torch.from_numpy(ids), torch.from_numpy(labels), torch.from_numpy(positions),
                      real_tokens, targets, model_image_inputs([span for row in rows for span in row.images]))


class BatchPlan:
    """Rows per step = micro_batch x grad_accum x world; epochs reshuffle with seed + epoch."""

    def __init__(self, rows: list[PackedRow], micro_batch: int, grad_accum: int, world: int, rank: int,
                 seed: int, pad_id: int, pad_to: int | None = None) -> None:
        self.rows, self.micro_batch, self.grad_accum = rows, micro_batch, grad_accum
        self.world, self.rank, self.seed, self.pad_id, self.pad_to = world, rank, seed, pad_id, pad_to
        self.per_step = micro_batch * grad_accum * world
        self._orders: dict[int, np.ndarray] = {}
        self.filler = image_filler(rows)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng(self.seed + epoch).permutation(len(self.rows))}
        return self._orders[epoch]

    def _row(self, global_index: int) -> PackedRow:
        epoch, offset = divmod(global_index, len(self.rows))
        return self.rows[self._order(epoch)[offset]]

    def step(self, step: int) -> list[MicroBatch]:
        """The grad_accum micro-batches of `step` (1-based) for this rank."""
        start = (step - 1) * self.per_step
        batches = []
        for micro in range(self.grad_accum):
            first = start + (micro * self.world + self.rank) * self.micro_batch
            rows = [self._row(first + i) for i in range(self.micro_batch)]
            batches.append(collate(rows, self.pad_id, self.pad_to, self.filler))
        return batches


def causal_lm_loss(model: torch.nn.Module, batch: MicroBatch, num_items: float, chunk_tokens: int = 0,
                   cross_entropy: Callable | None = None) -> torch.Tensor:
    """Sum of token losses / num_items. No attention_mask and no KV cache: transformers then builds
    a block-diagonal causal mask from the restarting position ids (packed samples stay apart).
    `chunk_tokens` > 0: the same loss without the whole logits (jobs/sft/chunked_loss.py), each chunk's by
    `cross_entropy` (None: eager)."""
    if chunk_tokens > 0:
        from jobs.sft.chunked_loss import chunked_lm_loss

        return chunked_lm_loss(model, batch, num_items, chunk_tokens, cross_entropy)
    shift = {"shift_labels": batch.labels} if batch.shifted else {}
    out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, labels=batch.labels,
                num_items_in_batch=num_items, use_cache=False, **shift, **batch.images)
    return out.loss
