"""Sample ratios: <1 keeps a seeded subset, >1 repeats whole copies plus a seeded fraction."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def apply_ratio(items: Sequence[T], ratio: float, rng: np.random.Generator) -> list[T]:
    whole = math.floor(ratio)
    extra = round((ratio - whole) * len(items))
    picked = list(items) * whole
    if extra:
        picked += [items[i] for i in sorted(rng.permutation(len(items))[:extra])]
    return picked
