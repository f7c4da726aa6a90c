"""Evaluate driver: the evaluator's held-out inputs built once (so every model sees the same ones), one Ray
task per model, a comparison table printed and logged (metrics + markdown artifact).

Evaluators (`eval.metric`): jobs/evaluate/registry.py (perplexity, caption)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from core import storage
from core.errors import ConfigError
from core.models import MODELS
from core.timing import lap
from jobs.base import RunContext
from jobs.evaluate.registry import EVALUATORS

log = logging.getLogger("jobs.evaluate")


@dataclass
class Prepared:
    inputs: Any
    tokenizer: Any
    models: list[tuple[str, str, str | None, dict]]  # (label, registry name, path, overrides)


def _same_tokenizer(a: Any, b: Any) -> bool:
    return a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id


class EvaluateJob:
    sections = ("model", "eval")

    def prepare(self, spec: Any, ctx: RunContext) -> Prepared:
        e = spec.eval
        evaluator = EVALUATORS.get(e.metric)
        if e.batch_size < 1 or e.threads < 1:
            raise ConfigError("eval.batch_size", "batch_size and threads must be >= 1")
        source = MODELS.get(spec.model.name)
        source.validate(spec.model)
        tokenizer = source.tokenizer(spec.model)
        models = [("model", spec.model.name, spec.model.path, dict(spec.model.overrides))]
        other_cfg = None
        if e.compare_to:
            storage.local_path(e.compare_to, field="eval.compare_to")  # exists (S3: fetched into the cache)
            other = storage.absolute(e.compare_to)  # workers read it themselves, wherever they run
            hf = MODELS.get("hf")
            other_cfg = type(spec.model)(name="hf", path=other)
            hf.validate(other_cfg)
            if not _same_tokenizer(tokenizer, hf.tokenizer(other_cfg)):
                raise ConfigError("eval.compare_to", f"{e.compare_to}: another tokenizer; scores on "
                                  "different tokens do not compare")
            models.append(("compare_to", "hf", other, {}))
        inputs = evaluator.prepare(spec, tokenizer, other_cfg)
        if spec.job.parent_run:
            ctx.run.set_tags({"job.parent_run": spec.job.parent_run})
        return Prepared(inputs, tokenizer, models)

    def run(self, spec: Any, ctx: RunContext, prepared: Prepared) -> dict[str, Any]:
        import ray

        from jobs.evaluate.perplexity import evaluate

        e = spec.eval
        evaluator = EVALUATORS.get(e.metric)
        task = ray.remote(num_cpus=1)(evaluate)
        inputs = ray.put(prepared.inputs)
        refs = [task.remote(name, path, overrides, inputs, e, spec.model.seed)
                for _, name, path, overrides in prepared.models]
        done = ray.get(refs)
        lap("load", at=max(d["entered_at"] for d in done))
        lap("work", at=max(d["loaded_at"] for d in done))
        raw = {m[0]: d["scores"] for m, d in zip(prepared.models, done, strict=True)}
        results = {label: evaluator.summarize(r, prepared.inputs, prepared.tokenizer) for label, r in raw.items()}
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
