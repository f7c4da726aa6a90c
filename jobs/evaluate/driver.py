"""Evaluate driver: one Ray actor per model (created by warm_up: it loads its model while the driver builds the
evaluator's held-out inputs, once, so every model sees the same ones), a comparison table printed and logged
(metrics + markdown artifact).

Evaluators (`eval.metric`): jobs/evaluate/registry.py (perplexity, caption)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from core import storage
from core.cluster import ActorGroup, lap_workers_loaded, remote_actor
from core.errors import ConfigError, NumericError
from core.models import MODELS
from core.timing import lap
from jobs.base import RunContext
from jobs.evaluate.registry import EVALUATORS

log = logging.getLogger("jobs.evaluate")
SCORER = "jobs.evaluate.perplexity:ModelScorer"  # by path: torch is imported in the workers, not here


@dataclass
class Prepared:
    inputs: Any
    tokenizer: Any
    models: list[tuple[str, str, str | None, dict]]  # (label, registry name, path, overrides)


def _same_tokenizer(a: Any, b: Any) -> bool:
    return a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id


def _check(e: Any) -> None:
    if e.batch_size < 1 or e.threads < 1:
        raise ConfigError("eval.batch_size", "batch_size and threads must be >= 1")


def _models(spec: Any) -> list[tuple[str, str, str | None, dict]]:
    """(label, registry name, path, overrides) of each model to score; eval.compare_to's path as the workers read
    it themselves, wherever they run."""
    models = [("model", spec.model.name, spec.model.path, dict(spec.model.overrides))]
    if spec.eval.compare_to:
        models.append(("compare_to", "hf", storage.absolute(spec.eval.compare_to), {}))
    return models


class EvaluateJob:
    sections = ("model", "eval")

    @staticmethod
    def check(spec: Any) -> None:
        _check(spec.eval)

    def warm_up(self, spec: Any) -> ActorGroup:
        """One scoring actor per model, each loading its model as it starts: while the driver builds the inputs
        (attached to a running cluster, while it also opens the MLflow run); prepare() checks every path first, so a
        worker's load error is never the one reported."""
        actor = remote_actor(SCORER, ("score",), num_cpus=1)
        return ActorGroup([actor.remote(name, path, overrides, spec.eval, spec.model.seed)
                           for _, name, path, overrides in _models(spec)])

    def prepare(self, spec: Any, ctx: RunContext) -> Prepared:
        e = spec.eval
        evaluator = EVALUATORS.get(e.metric)
        source = MODELS.get(spec.model.name)
        source.validate(spec.model)
        tokenizer = source.tokenizer(spec.model)
        other_cfg = None
        if e.compare_to:
            storage.local_path(e.compare_to, field="eval.compare_to")  # exists (S3: fetched into the cache)
            hf = MODELS.get("hf")
            other_cfg = type(spec.model)(name="hf", path=storage.absolute(e.compare_to))
            hf.validate(other_cfg)
            if not _same_tokenizer(tokenizer, hf.tokenizer(other_cfg)):
                raise ConfigError("eval.compare_to", f"{e.compare_to}: another tokenizer; scores on "
                                  "different tokens do not compare")
        models = _models(spec)
        inputs = evaluator.prepare(spec, tokenizer, other_cfg)
        if spec.job.parent_run:
            ctx.run.set_tags({"job.parent_run": spec.job.parent_run})
        return Prepared(inputs, tokenizer, models)

    def run(self, spec: Any, ctx: RunContext, prepared: Prepared) -> dict[str, Any]:
        import ray

        e = spec.eval
        evaluator = EVALUATORS.get(e.metric)
        inputs = ray.put(prepared.inputs)
        actors = ctx.warm.actors
        raw = dict(zip([m[0] for m in prepared.models], ray.get([a.score.remote(inputs) for a in actors]),
                       strict=True))
        lap_workers_loaded(actors)
        results = {label: evaluator.summarize(r, prepared.inputs, prepared.tokenizer) for label, r in raw.items()}
        for label, result in results.items():
            bad = sorted(key for key, value in result.items() if not math.isfinite(value))
            if bad:  # never reported as a result (an overflow in the model's forward, or NaN activations)
                raise NumericError(f"{label} {bad[0]}", f"the score is {result[bad[0]]}")
        lap("publish")
        table = _table(prepared, results, evaluator.columns(prepared.inputs))
        print(table, flush=True)
        ctx.run.log_text(table, f"eval/{e.metric}.md")
        metrics = {f"{label}.{k}" if label != "model" else k: v for label, r in results.items() for k, v in r.items()}
        if "compare_to" in results:
            metrics.update(evaluator.compare(results["model"], results["compare_to"]))
        ctx.run.log_metrics(metrics, step=0)
        return {key: round(value, 6) for key, value in metrics.items()}


def _table(prepared: Prepared, results: dict[str, dict[str, float]], columns: list[tuple[str, str, str]]) -> str:
    rows = ["| model | path | " + " | ".join(h for h, _, _ in columns) + " |",
            "|---|---|" + "---:|" * len(columns)]
    for label, name, path, _ in prepared.models:
        cells = " | ".join(format(results[label][key], fmt) for _, key, fmt in columns)
        rows.append(f"| {label} | {path or name} | {cells} |")
    return "\n".join(rows)
