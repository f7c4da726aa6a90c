"""Blocks mode's split of the blocks over workers (jobs/quantize/blockloop.balanced_runs) against brute force."""

import itertools
import random

import pytest

from jobs.quantize.blockloop import balanced_runs


def worker_cost(run: list[int], fp_cost: float) -> float:
    # the worker runs every block before its last one: its own calibrated (1), the others forward (fp_cost)
    return len(run) + fp_cost * (run[-1] + 1 - len(run))


def brute_force(todo: list[int], n: int, fp_cost: float) -> float:
    best = float("inf")
    for cuts in itertools.combinations(range(1, len(todo)), n - 1):
        bounds = [0, *cuts, len(todo)]
        runs = [todo[a:b] for a, b in itertools.pairwise(bounds)]
        best = min(best, max(worker_cost(r, fp_cost) for r in runs))
    return best


@pytest.mark.parametrize("seed", range(20))
def test_split_is_optimal_contiguous_and_complete(seed: int) -> None:
    rng = random.Random(seed)
    todo = sorted(rng.sample(range(14), rng.randint(1, 10)))  # gaps: blocks finished before a resume
    n = rng.randint(1, min(4, len(todo)))
    fp_cost = rng.choice([0.0, 0.05, 0.13, 0.5, 0.9])
    runs = balanced_runs(todo, n, fp_cost)
    assert len(runs) == n and all(runs) and [i for r in runs for i in r] == todo
    got = max(worker_cost(r, fp_cost) for r in runs)
    assert got == pytest.approx(brute_force(todo, n, fp_cost), abs=1e-12)


def test_later_workers_get_fewer_blocks() -> None:
    assert [len(r) for r in balanced_runs(list(range(32)), 2, 0.0)] == [16, 16]
    assert [len(r) for r in balanced_runs(list(range(32)), 2, 0.13)] == [17, 15]


def test_nothing_left_and_too_many_workers() -> None:
    assert balanced_runs([], 1, 0.15) == [[]]  # a rerun of a finished job goes on to export
    with pytest.raises(ValueError, match="3 blocks into 4"):
        balanced_runs([0, 1, 2], 4, 0.15)
