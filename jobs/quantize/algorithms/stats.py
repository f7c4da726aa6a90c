"""Calibration statistics that data-parallel workers can combine: every key declares how it reduces.

"sum" keys are sums over tokens (Gram matrices x^T x, sums of |x|, token counts, loss sums) and "max"
keys are maxima over tokens (per-channel abs max). Reducing shard statistics therefore equals
observing all the data at once, up to float summation order. Under torch.distributed the same holds
with `dist.all_reduce(t, op=ReduceOp.SUM / ReduceOp.MAX)` per key, in sorted key order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

REDUCE_OPS = ("sum", "max")


@dataclass
class Stats:
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    ops: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, value: torch.Tensor, op: str = "sum") -> None:
        """Accumulate `value` into `key` with `op` (the op of a key never changes)."""
        if op not in REDUCE_OPS:
            raise ValueError(f"unknown reduce op {op!r} (known: {', '.join(REDUCE_OPS)})")
        value = value.detach()
        if key not in self.values:
            self.values[key], self.ops[key] = value.clone(), op
            return
        if self.ops[key] != op:
            raise ValueError(f"stats key {key!r} reduces by {self.ops[key]!r}, not {op!r}")
        _combine_(self.values[key], value, op)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.values[key]

    def __contains__(self, key: object) -> bool:
        return key in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.values))

    def __len__(self) -> int:
        return len(self.values)

    def merged(self, other: Stats) -> Stats:
        """Union with stats of another pass (disjoint keys): what `apply` receives after several passes."""
        overlap = sorted(set(self.values) & set(other.values))
        if overlap:
            raise ValueError(f"stats keys observed twice: {', '.join(overlap)}")
        return Stats({**self.values, **other.values}, {**self.ops, **other.ops})

    def to(self, device: torch.device | str, *, only: str = "", skip: str | None = None) -> Stats:
        """The keys starting with `only` (all by default) moved to `device`, except those starting with `skip`
        (left where they are)."""
        def moves(key: str) -> bool:
            return key.startswith(only) and not (skip is not None and key.startswith(skip))

        return Stats({k: v.to(device) if moves(k) else v for k, v in self.values.items()}, dict(self.ops))


def reduce_stats(parts: Sequence[Stats]) -> Stats:
    """Combine per-worker stats key by key with each key's op. Empty stats (a worker with no data) are
    skipped; the others must agree on keys, ops and shapes."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return Stats()
    first = parts[0]
    out = Stats({k: v.clone() for k, v in first.values.items()}, dict(first.ops))
    for part in parts[1:]:
        if set(part.values) != set(first.values) or part.ops != first.ops:
            diff = sorted(set(part.values) ^ set(first.values)) or sorted(first.ops)
            raise ValueError(f"cannot reduce stats with different keys or ops: {', '.join(diff[:5])}")
        for key, value in part.values.items():
            _combine_(out.values[key], value.to(out.values[key].device), first.ops[key])
    return out


def _combine_(acc: torch.Tensor, value: torch.Tensor, op: str) -> None:
    if acc.shape != value.shape:
        raise ValueError(f"stats shapes differ: {tuple(acc.shape)} vs {tuple(value.shape)}")
    if op == "sum":
        acc.add_(value.to(acc.dtype))
    else:
        torch.maximum(acc, value.to(acc.dtype), out=acc)
