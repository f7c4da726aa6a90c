"""Evaluate driver: eval.num_workers actors (created by warm_up, one GPU each when the cluster has them), each
holding the model and eval.compare_to's reference, load them while the driver builds the evaluator's held-out
inputs once; the inputs are split over the workers in whole batches, in order, and the per-token (or per-item)
scores they send back are reduced here, so any number of workers gives the same sums. A table line per model is
printed and logged (metrics, a markdown table, a KL histogram), with the eval phase's speed.

Evaluators (`eval.metric`): jobs/evaluate/registry.py (perplexity, caption); sharding: jobs/evaluate/sharded.py."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from core import storage
from core.cluster import ActorGroup, check_fits, compute_dtype, lap_workers_loaded, remote_actor, wants_gpu
from core.errors import ConfigError, NumericError
from core.models import MODELS
from core.timing import lap
from jobs.base import RunContext
from jobs.evaluate import sharded
from jobs.evaluate.registry import EVALUATORS
from jobs.evaluate.report import table

log = logging.getLogger("jobs.evaluate")
WORKER = "jobs.evaluate.worker:EvalWorker"  # by path: torch is imported in the workers, not here
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class Prepared:
    inputs: Any
    tokenizer: Any
    models: list[tuple[str, str, str | None, dict]]  # (label, registry name, path, overrides)
    shards: list[Any]  # the inputs of each worker


@dataclass
class Workers(ActorGroup):
    use_gpu: bool
    dtype: str


def _same_tokenizer(a: Any, b: Any) -> bool:
    return a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id


def _check(e: Any) -> None:
    for name in ("num_workers", "batch_size", "threads"):
        if getattr(e, name) < 1:
            raise ConfigError(f"eval.{name}", f"must be >= 1 (got {getattr(e, name)})")
    if e.cpus_per_worker <= 0:
        raise ConfigError("eval.cpus_per_worker", f"must be > 0 (got {e.cpus_per_worker})")
    if str(e.use_gpu).lower() not in ("auto", "true", "false"):
        raise ConfigError("eval.use_gpu", f"must be one of auto, true, false (got {e.use_gpu!r})")
    if e.dtype not in DTYPES:
        raise ConfigError("eval.dtype", f"must be one of {', '.join(DTYPES)} (got {e.dtype!r})")


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
        if spec.eval.metric == "lm_eval":  # its own fields (a light module: no torch at check time)
            from jobs.evaluate.harness import check

            check(spec.eval)

    def warm_up(self, spec: Any) -> Workers:
        """eval.num_workers actors, each loading every model as it starts: while the driver builds the inputs
        (attached to a running cluster, while it also opens the MLflow run); prepare() checks every path first, so a
        worker's load error is never the one reported."""
        e = spec.eval
        use_gpu = wants_gpu(e.use_gpu)
        dtype = compute_dtype(e.dtype, use_gpu)
        check_fits("eval", e.num_workers, e.cpus_per_worker, 1 if use_gpu else 0)
        actor = remote_actor(WORKER, ("score",), num_cpus=e.cpus_per_worker, num_gpus=1 if use_gpu else 0)
        models = _models(spec)
        log.info("evaluate: %d worker(s) on %s (%s), each holding %s", e.num_workers, "GPU" if use_gpu else "CPU",
                 dtype, " and ".join(label for label, *_ in models))
        return Workers([actor.remote(models, e, spec.model.seed, use_gpu, dtype) for _ in range(e.num_workers)],
                       use_gpu, dtype)

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
        inputs = evaluator.prepare(spec, tokenizer, other_cfg)
        shards = sharded.split(evaluator, inputs, e, e.num_workers)
        if spec.job.parent_run:
            ctx.run.set_tags({"job.parent_run": spec.job.parent_run})
        return Prepared(inputs, tokenizer, _models(spec), shards)

    def run(self, spec: Any, ctx: RunContext, prepared: Prepared) -> dict[str, Any]:
        import ray

        e, p = spec.eval, prepared
        evaluator = EVALUATORS.get(e.metric)
        actors = ctx.warm.actors
        parts = ray.get([actor.score.remote(shard) for actor, shard in zip(actors, p.shards, strict=True)])
        lap_workers_loaded(actors)
        raw = sharded.merge(evaluator, [part["raw"] for part in parts])
        results = {label: evaluator.summarize(raw[label], p.inputs, p.tokenizer) for label, *_ in p.models}
        compared = {}
        if "compare_to" in results:
            compared = {**evaluator.compare(results["model"], results["compare_to"]),
                        **(evaluator.paired(raw) if hasattr(evaluator, "paired") else {})}
        for label, values in (*results.items(), ("model", compared)):
            _check_finite(label, values)
        lap("publish")
        speed = _speed(parts, raw, ctx.warm)
        text = table(p.models, results, evaluator.columns(p.inputs), compared,
                     getattr(evaluator, "compare_columns", []))
        print(text, flush=True)
        ctx.run.log_text(text, f"eval/{e.metric}.md")
        for name, figure in (evaluator.figures(raw) if hasattr(evaluator, "figures") else {}).items():
            ctx.run.log_figure(figure, f"eval/{name}")
        for name, data in (evaluator.artifacts(raw) if hasattr(evaluator, "artifacts") else {}).items():
            ctx.run.log_dict(data, f"eval/{name}")  # lm_eval: the harness's results JSON of each model
        metrics = {f"{label}.{k}" if label != "model" else k: v for label, r in results.items() for k, v in r.items()}
        metrics.update(compared)
        ctx.run.log_metrics({**metrics, **speed}, step=0)
        return {key: float(f"{value:.7g}") for key, value in {**metrics, **speed}.items()}


def _check_finite(label: str, values: dict[str, float]) -> None:
    """Never reported as a result: an overflow in the model's forward, or NaN activations."""
    bad = sorted(key for key, value in values.items() if not math.isfinite(value))
    if bad:
        raise NumericError(f"{label} {bad[0]}", f"the score is {values[bad[0]]}")


def _speed(parts: list[dict[str, Any]], raw: dict[str, Any], workers: Workers) -> dict[str, float]:
    """The eval phase: the slowest worker's scoring seconds (model load excluded), held-out tokens per second over
    all workers (with compare_to each token goes through both models), load seconds and peak GPU memory."""
    seconds = max(part["seconds"] for part in parts)
    speed = {"eval_seconds": seconds, "eval_load_seconds": max(part["load_seconds"] for part in parts)}
    tokens = raw.get("input_tokens")
    if isinstance(tokens, int | float) and seconds > 0:
        speed["eval_tokens_per_second"] = tokens / seconds
    peaks = [part["gpu_peak_gib"] for part in parts if "gpu_peak_gib" in part]
    if peaks:
        speed["gpu_peak_gib"] = max(peaks)
    log.info("evaluate: %s tokens in %.2f s on %d %s worker(s) (%s): %.0f tokens/s", tokens, seconds, len(parts),
             "GPU" if workers.use_gpu else "CPU", workers.dtype, speed.get("eval_tokens_per_second", float("nan")))
    return speed
