"""Soft packing: whole samples into rows of at most `max_len` tokens, each sample attending only
to itself. Position ids restart at every sample; transformers' mask builder turns restarts into a
block-diagonal causal mask (sdpa/eager/flex) when no attention_mask is passed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from core.data.tokenize import IGNORE, ImageSpan, TokenizedSample

OPEN_BINS_SEARCHED = 64  # first-fit over the most recent open rows: near-full rows at O(n) cost


@dataclass
class PackedRow:
    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    num_samples: int
    images: list[ImageSpan] = field(default_factory=list)  # the samples' images in token order, row offsets

    def __len__(self) -> int:
        return len(self.input_ids)


def plan_bins(lengths: Sequence[int], max_len: int) -> list[list[int]]:
    """Deterministic first-fit in the given order; every length must be <= max_len."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index, length in enumerate(lengths):
        start = max(0, len(bins) - OPEN_BINS_SEARCHED)
        target = next((b for b in range(start, len(bins)) if room[b] >= length), None)
        if target is None:
            bins.append([])
            room.append(max_len)
            target = len(bins) - 1
        bins[target].append(index)
        room[target] -= length
    return bins


def make_row(samples: Sequence[TokenizedSample]) -> PackedRow:
    labels, images, offset = [], [], 0
    for sample in samples:
        own = sample.labels.copy()
        own[0] = IGNORE  # the previous sample's last token must not learn to predict this one
        labels.append(own)
        images += [span.shifted(offset) for span in sample.images]
        offset += len(sample)
    return PackedRow(
        input_ids=np.concatenate([s.input_ids for s in samples]),
        labels=np.concatenate(labels),
        position_ids=np.concatenate([np.arange(len(s), dtype=np.int32) for s in samples]),
        num_samples=len(samples),
        images=images,
    )


def pack(samples: Sequence[TokenizedSample], max_len: int) -> list[PackedRow]:
    bins = plan_bins([len(s) for s in samples], max_len)
    return [make_row([samples[i] for i in b]) for b in bins]


def unpacked(samples: Sequence[TokenizedSample]) -> list[PackedRow]:
    return [make_row([s]) for s in samples]
