"""Mixed-precision search: the cost formula by hand, optimality against brute force, the budget, the error."""

from __future__ import annotations

import itertools
import time
from fractions import Fraction

import numpy as np
import pytest

from core.errors import ConfigError
from jobs.sensitivity.search import Handle, format_bits, make_handle, search

FORMATS = ("w4g128", "w8", "fp16")


def _brute(handles: list[Handle], budget: float) -> float | None:
    """The least total score over every combination within the budget (None: infeasible)."""
    limit = Fraction(repr(budget)) * sum(h.elements for h in handles)
    best = None
    for combo in itertools.product(*(h.candidates for h in handles)):
        bits = sum(h.bits[f] for h, f in zip(handles, combo, strict=True))
        if bits <= limit:
            score = sum(h.scores[f] for h, f in zip(handles, combo, strict=True))
            best = score if best is None else min(best, score)
    return best


def _random_handles(seed: int, n: int = 6, ties: bool = False) -> list[Handle]:
    """Random bits and scores; with `ties`, integer scores from {0,1,2} and shared shapes so many
    combinations tie on cost and on score."""
    rng = np.random.default_rng(seed)
    handles = []
    for i in range(n):
        in_f, out_f = (128, 64) if ties else (128 * int(rng.integers(1, 5)), 32 * int(rng.integers(1, 9)))
        scores = {f: float(rng.integers(0, 3)) if ties else float(rng.exponential() * (3 - k))
                  for k, f in enumerate(FORMATS)}
        handles.append(make_handle(f"h{i}", [(in_f, out_f)], scores))
    return handles


def _check(handles: list[Handle], budget: float) -> None:
    expected = _brute(handles, budget)
    result = search(handles, budget)
    assert expected is not None and result.feasible and result.exact and result.gap_bound == 0.0
    assert result.total_score == pytest.approx(expected, abs=1e-9)
    assert result.effective_bits <= budget
    assert result.total_bits == sum(h.bits[result.choices[h.name]] for h in handles)
    assert result.total_score == pytest.approx(sum(h.scores[result.choices[h.name]] for h in handles), abs=1e-12)
    assert list(result.choices) == [h.name for h in handles]


def test_format_bits_by_hand() -> None:
    # 64 rows x 256 inputs = 16384 elements; g128 -> 2 groups per row, 128 (row, group) pairs
    assert format_bits("w4g128", 256, 64) == 16384 * 4 + 128 * 16 == 67584
    assert format_bits("w4g128", 256, 64, symmetric=False) == 67584 + 128 * 4  # + a 4-bit zero per pair
    assert format_bits("w4a8g128", 256, 64) == 67584  # activations cost no storage
    assert format_bits("w8", 256, 64) == 16384 * 8 + 64 * 16 == 132096  # per channel: one scale per row
    assert format_bits("w8a8", 256, 64) == 132096
    assert format_bits("fp16", 256, 64) == format_bits("BF16", 256, 64) == 16384 * 16
    with pytest.raises(ConfigError, match="does not divide"):
        format_bits("w4g128", 200, 64)


def test_make_handle_sums_its_linears() -> None:
    h = make_handle("qkv", [(256, 64), (256, 32)], {"w4g128": 1.0, "fp16": 0.0})
    assert h.elements == 256 * 96
    assert h.bits == {"w4g128": format_bits("w4g128", 256, 64) + format_bits("w4g128", 256, 32),
                      "fp16": 16 * 256 * 96}


@pytest.mark.parametrize("seed", range(12))
def test_optimal_against_brute_force(seed: int) -> None:
    handles = _random_handles(seed)
    elements = sum(h.elements for h in handles)
    low = sum(min(h.bits.values()) for h in handles) / elements
    for budget in (low + 0.01, 4.5, 6.0, 9.0, 16.0):
        _check(handles, budget)


@pytest.mark.parametrize("seed", range(8))
def test_optimal_with_ties(seed: int) -> None:
    handles = _random_handles(100 + seed, ties=True)
    for budget in (4.2, 5.0, 7.5, 10.0, 16.0):
        _check(handles, budget)


def test_budget_is_the_decimal_written() -> None:
    # 4.35 * 100 is 434.99999999999994 in floats; a 435-bit solution is exactly at the budget
    handles = [Handle("a", 100, {"w4": 1.0, "fp16": 0.0}, {"w4": 435, "fp16": 1600})]
    result = search(handles, 4.35)
    assert result.choices == {"a": "w4"} and result.effective_bits == 4.35


def test_infeasible_budget_names_the_minimum() -> None:
    handles = [make_handle("a", [(256, 64)], {"w4g128": 1.0, "w8": 0.5}),
               make_handle("b", [(256, 64)], {"w8": 0.1, "fp16": 0.0})]
    # minimum: a in w4g128 (67584) + b in w8 (132096) over 32768 elements = 6.09375 -> 6.10 (rounded up)
    with pytest.raises(ConfigError) as err:
        search(handles, 6.0)
    message = str(err.value)
    assert err.value.field == "search.effective_bits" and "\n" not in message
    assert "the smallest achievable is 6.10 bits" in message
    assert search(handles, 6.10).effective_bits == 6.09375
    with pytest.raises(ConfigError, match="positive"):
        search(handles, 0.0)


def test_capped_frontier_reports_a_true_gap_bound() -> None:
    rng = np.random.default_rng(7)
    handles = []
    for i in range(40):
        e = int(rng.integers(1, 50)) * 128
        bits = {"w4": 4 * e + e // 8, "w8": 8 * e + 64, "fp16": 16 * e}
        handles.append(Handle(f"h{i}", e, {f: float((16 * e - b) * rng.uniform(0.9, 1.1)) for f, b in bits.items()},
                              bits))
    exact = search(handles, 6.0)
    capped = search(handles, 6.0, max_states=64)
    assert exact.exact and exact.max_frontier > 64
    assert not capped.exact and capped.gap_bound > 0 and capped.max_frontier <= 64 and capped.feasible
    assert exact.total_score <= capped.total_score <= exact.total_score + capped.gap_bound


def test_llm_sized_search_is_fast_and_exact() -> None:
    # 32 layers x 7 Linears of a Llama-3-8B shape, 4 candidates
    shapes = [(4096, 4096), (4096, 1024), (4096, 1024), (4096, 4096), (4096, 14336), (4096, 14336), (14336, 4096)]
    rng = np.random.default_rng(0)
    handles = []
    for layer, (k, shape) in itertools.product(range(32), enumerate(shapes)):
        base = rng.lognormal(0, 2)
        scores = {f: base * m * rng.lognormal(0, 0.3) for f, m in
                  (("w3g128", 4.0), ("w4g128", 1.0), ("w8", 0.05), ("fp16", 0.0))}
        handles.append(make_handle(f"layers.{layer}.{k}", [shape], scores))
    start = time.perf_counter()
    result = search(handles, 4.5)
    assert time.perf_counter() - start < 10.0  # about 0.3 s alone on one core
    assert result.exact and result.effective_bits <= 4.5
