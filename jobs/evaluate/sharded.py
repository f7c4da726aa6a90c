"""How the evaluate job spreads an evaluator over its workers (eval.num_workers: each holds the model and the
reference). An evaluator that also defines
- split(inputs, e, parts) -> one part of the inputs per worker, whole batches in order,
- score_models(models, inputs, e) -> raw scores of every model ({"model": ..., "compare_to": ...}) on one part,
- merge(parts) -> the raw scores of the whole inputs (per-token or per-item values concatenated in order, so the
  driver's sums do not depend on how many workers there were),
is sharded; optional: paired(raw) (metrics from both models' scores on the same positions), figures(raw) and
compare_columns. One that has only the Evaluator protocol (jobs/evaluate/registry.py: score(model, inputs, e)) runs
whole on one worker, a model at a time."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import ConfigError


def slices(n: int, parts: int) -> list[slice]:
    """`n` items in `parts` contiguous runs, sizes differing by at most one (numpy's array_split)."""
    bounds = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(n), parts)])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def split(evaluator: Any, inputs: Any, e: Any, parts: int) -> list[Any]:
    if hasattr(evaluator, "split"):
        return evaluator.split(inputs, e, parts)
    if parts > 1:
        raise ConfigError("eval.num_workers", f"eval={e.metric} scores on one worker (got {parts})")
    return [inputs]


def score(evaluator: Any, models: dict[str, Any], inputs: Any, e: Any) -> dict[str, Any]:
    if hasattr(evaluator, "score_models"):
        return evaluator.score_models(models, inputs, e)
    return {label: evaluator.score(model, inputs, e) for label, model in models.items()}


def merge(evaluator: Any, parts: list[dict[str, Any]]) -> dict[str, Any]:
    return evaluator.merge(parts) if hasattr(evaluator, "merge") else parts[0]


def concat(parts: list[Any]) -> Any:
    """Raw scores of consecutive parts as one: arrays and lists concatenated, counts added, dicts key by key."""
    first = parts[0]
    if isinstance(first, dict):
        return {key: concat([part[key] for part in parts]) for key in first}
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    if isinstance(first, list):
        return [item for part in parts for item in part]
    return sum(parts)
