"""Mixed-precision search: one format per handle, the least total score under an effective-bits budget.

Cost of one Linear with `in_features` inputs and `out_features` rows (`format_bits`), in bits:

    quantized (wN[a8][gK])   out*in*N                    weights
                           + out*groups*16               one 16-bit scale per (row, group)
                           + out*groups*N                asymmetric only: one N-bit zero per (row, group)
                             groups = in / K, or 1 for per-channel formats (no gK)
    fp16 / bf16              out*in*16                   not quantized, no scales

Activation bits (a8) cost nothing: activations are quantized on the fly. A handle (a group of Linears
scored together) costs the sum over its Linears. Effective bits = sum of the chosen handles' bits / sum of
their weight elements; the budget holds when effective bits <= budget.

The search is exact: a dynamic program over the handles keeping the Pareto frontier of (bits, score)
partial solutions. Only if a frontier grows past `max_states` are states merged by epsilon-dominance; the
result then carries `gap_bound`, an upper bound on how far its score can be above the optimum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from core.errors import ConfigError
from kernels.quant import QuantFormat, check_group_size, parse_target

FIELD = "search.effective_bits"
SCALE_BITS = 16
COST_FORMULA = ("bits = elements*weight_bits + rows*groups*16 (scales) + rows*groups*weight_bits (zeros, "
                "asymmetric only), groups = in_features/group_size or 1 per channel; fp16/bf16 = elements*16; "
                "effective bits = sum(bits) / sum(elements)")


@dataclass(frozen=True)
class Handle:
    """A recipe handle: `elements` weight elements, and per candidate format its score (lower is better)
    and its size cost in bits (see `format_bits`)."""

    name: str
    elements: int
    scores: Mapping[str, float]
    bits: Mapping[str, int]

    @property
    def candidates(self) -> list[str]:
        return list(self.scores)


@dataclass(frozen=True)
class SearchResult:
    choices: dict[str, str]  # handle name -> chosen format, in handle order
    total_score: float
    total_bits: int
    total_elements: int
    effective_bits: float
    budget: float
    feasible: bool
    exact: bool = True
    gap_bound: float = 0.0  # 0 when exact; else the chosen score is at most optimum + gap_bound
    max_frontier: int = 0  # largest Pareto frontier the program kept (for diagnostics)
    cost_formula: str = field(default=COST_FORMULA)


def format_bits(fmt: str | QuantFormat, in_features: int, out_features: int, *, symmetric: bool = True,
                module: str = "linear") -> int:
    """Total storage bits of one Linear in `fmt` (formula in the module docstring)."""
    elements = in_features * out_features
    q = fmt if isinstance(fmt, QuantFormat) else parse_target(fmt, symmetric)
    if q is None:
        return 16 * elements
    check_group_size(q, module, in_features)  # partial groups are not a layout the kernels have
    groups = out_features * (in_features // q.group_size if q.group_size else 1)
    zero_bits = 0 if q.symmetric else q.weight_bits
    return elements * q.weight_bits + groups * (SCALE_BITS + zero_bits)


def make_handle(name: str, shapes: Iterable[tuple[int, int]], scores: Mapping[str, float], *,
                symmetric: bool = True) -> Handle:
    """A handle over Linears of (in_features, out_features) `shapes`, costed for every format in `scores`."""
    shapes = list(shapes)
    bits = {f: sum(format_bits(f, i, o, symmetric=symmetric, module=name) for i, o in shapes) for f in scores}
    return Handle(name, sum(i * o for i, o in shapes), dict(scores), bits)


def search(handles: Sequence[Handle], budget: float, *, max_states: int = 100_000) -> SearchResult:
    """Choose one format per handle minimising the total score subject to effective bits <= `budget`."""
    _check_handles(handles)
    elements = sum(h.elements for h in handles)
    limit = _budget_bits(budget, elements)
    cheapest = [min(h.bits.values()) for h in handles]
    if sum(cheapest) > limit:
        smallest = math.ceil(Fraction(sum(cheapest), elements) * 100) / 100  # rounded up: it is feasible
        raise ConfigError(FIELD, f"budget {budget:g} bits cannot be met by the candidates; "
                          f"the smallest achievable is {smallest:.2f} bits")
    # rest[i]: the least the handles after i can cost; a state that cannot fit with them is dropped (exact)
    rest = np.concatenate([np.cumsum(cheapest[::-1])[::-1][1:], [0]]).astype(np.int64)
    cost, score = np.zeros(1, np.int64), np.zeros(1, np.float64)
    back: list[tuple[np.ndarray, np.ndarray]] = []  # per handle: (parent state, candidate index)
    gap, widest = 0.0, 1
    for i, h in enumerate(handles):
        cost, score, parent, pick = _extend(cost, score, h, limit - int(rest[i]))
        if len(cost) > max_states:
            keep, delta = _merge(score, max_states)
            cost, score, parent, pick = cost[keep], score[keep], parent[keep], pick[keep]
            gap += delta
        widest = max(widest, len(cost))
        back.append((parent, pick))
    best = int(np.argmin(score))
    choices = _reconstruct(handles, back, best)
    total_bits = sum(h.bits[choices[h.name]] for h in handles)
    total_score = float(sum(h.scores[choices[h.name]] for h in handles))
    return SearchResult(choices, total_score, total_bits, elements, total_bits / elements, float(budget),
                        feasible=total_bits <= limit, exact=gap == 0.0, gap_bound=gap, max_frontier=widest)


def _extend(cost: np.ndarray, score: np.ndarray, h: Handle, limit: int):
    """Every state times every candidate of `h`, within `limit` bits, reduced to its Pareto frontier."""
    n = len(cost)
    c_bits = np.array([h.bits[f] for f in h.candidates], np.int64)
    c_score = np.array([h.scores[f] for f in h.candidates], np.float64)
    new_cost = (c_bits[:, None] + cost[None, :]).ravel()  # flat index = candidate * n + parent
    new_score = (c_score[:, None] + score[None, :]).ravel()
    idx = np.flatnonzero(new_cost <= limit)
    # each candidate's block is already sorted by cost: a stable sort merges the runs (timsort, ~4x lexsort)
    idx = idx[np.argsort(new_cost[idx], kind="stable")]
    idx = _lowest_score_per_cost(idx, new_cost[idx], new_score[idx])
    s = new_score[idx]
    keep = np.ones(len(idx), bool)  # keep a state only if it beats every cheaper (or equal-cost) one
    keep[1:] = s[1:] < np.minimum.accumulate(s)[:-1]
    idx = idx[keep]
    return new_cost[idx], new_score[idx], (idx % n).astype(np.int64), (idx // n).astype(np.int16)



def _lowest_score_per_cost(idx: np.ndarray, cost: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Of each run of equal costs (common: layers share shapes), the first state with the run's least score."""
    start = np.ones(len(cost), bool)
    start[1:] = cost[1:] != cost[:-1]
    if start.all():
        return idx
    run = np.cumsum(start) - 1
    hit = np.flatnonzero(score == np.minimum.reduceat(score, np.flatnonzero(start))[run])
    first = np.ones(len(hit), bool)
    first[1:] = run[hit][1:] != run[hit][:-1]
    return idx[hit[first]]


def _merge(score: np.ndarray, max_states: int) -> tuple[np.ndarray, float]:
    """Safeguard, off the exact path: bucket the frontier (cost ascending, score strictly descending) by
    score in `max_states // 2` buckets of width delta and keep each bucket's cheapest state. A dropped state
    is replaced by a cheaper one whose score is less than delta higher, so each merge adds < delta to the
    gap."""
    lo, hi = float(score.min()), float(score.max())
    delta = (hi - lo) / max(1, max_states // 2)
    bucket = np.floor((score - lo) / delta).astype(np.int64)
    keep = np.ones(len(score), bool)
    keep[1:] = bucket[1:] != bucket[:-1]  # buckets are contiguous runs; the first of a run is the cheapest
    return np.flatnonzero(keep), delta


def _reconstruct(handles: Sequence[Handle], back: list[tuple[np.ndarray, np.ndarray]], state: int
                 ) -> dict[str, str]:
    picks: list[str] = []
    for h, (parent, pick) in zip(reversed(handles), reversed(back), strict=True):
        picks.append(h.candidates[int(pick[state])])
        state = int(parent[state])
    return {h.name: f for h, f in zip(handles, reversed(picks), strict=True)}


def _budget_bits(budget: float, elements: int) -> int:
    """The most total bits the budget allows. The budget is read as the decimal the user wrote (4.3 is 43/10,
    not the float below it), so a solution at exactly the budget is accepted."""
    if not isinstance(budget, int | float) or not math.isfinite(budget) or budget <= 0:
        raise ConfigError(FIELD, f"must be a positive number of bits per weight, got {budget!r}")
    return math.floor(Fraction(repr(float(budget))) * elements)


def _check_handles(handles: Sequence[Handle]) -> None:
    if not handles:
        raise ValueError("search needs at least one handle")
    names = [h.name for h in handles]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate handle names: {sorted({n for n in names if names.count(n) > 1})}")
    for h in handles:
        if h.elements <= 0 or not h.scores or set(h.scores) != set(h.bits):
            raise ValueError(f"handle {h.name!r}: needs elements > 0 and the same candidates in scores and bits")
        if not all(math.isfinite(s) for s in h.scores.values()) or min(h.bits.values()) <= 0:
            raise ValueError(f"handle {h.name!r}: scores must be finite and bits positive")
