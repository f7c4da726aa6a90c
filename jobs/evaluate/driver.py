"""Evaluate driver: held-out token blocks built once (so both models see the same tokens), one Ray task
per model, a comparison table printed and logged (metrics + markdown artifact)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from core import storage
from core.data.calib import token_blocks
from core.errors import ConfigError
from core.models import MODELS
from jobs.base import RunContext

log = logging.getLogger("jobs.evaluate")
KNOWN_METRICS = ("perplexity",)  # jobs/evaluate/perplexity.py METRICS (not imported: no torch here)


@dataclass
class Prepared:
    ids: np.ndarray
    models: list[tuple[str, str, str | None, dict]]  # (label, registry name, path, overrides)


def _same_tokenizer(a: Any, b: Any) -> bool:
    return a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id


class EvaluateJob:
    sections = ("model", "eval")

    def prepare(self, spec: Any, ctx: RunContext) -> Prepared:
        e = spec.eval
        if e.metric not in KNOWN_METRICS:
            raise ConfigError("eval.metric", f"unknown metric {e.metric!r} (known: {', '.join(KNOWN_METRICS)})")
        if e.batch_size < 1 or e.threads < 1:
            raise ConfigError("eval.batch_size", "batch_size and threads must be >= 1")
        source = MODELS.get(spec.model.name)
        source.validate(spec.model)
        tokenizer = source.tokenizer(spec.model)
        models = [("model", spec.model.name, spec.model.path, dict(spec.model.overrides))]
        if e.compare_to:
            storage.local_path(e.compare_to, field="eval.compare_to")  # exists (S3: fetched into the cache)
            other = storage.absolute(e.compare_to)  # workers read it themselves, wherever they run
            hf = MODELS.get("hf")
            other_cfg = type(spec.model)(name="hf", path=other)
            hf.validate(other_cfg)
            if not _same_tokenizer(tokenizer, hf.tokenizer(other_cfg)):
                raise ConfigError("eval.compare_to", f"{e.compare_to}: another tokenizer; perplexities on "
                                  "different tokens do not compare")
            models.append(("compare_to", "hf", other, {}))
        ids = token_blocks(e.path, e.format, tokenizer, e.num_samples, e.seq_len, e.seed, e.text_field, "eval")
        if spec.job.parent_run:
            ctx.run.set_tags({"job.parent_run": spec.job.parent_run})
        return Prepared(ids, models)

    def run(self, spec: Any, ctx: RunContext, prepared: Prepared) -> dict[str, Any]:
        import ray

        from jobs.evaluate.perplexity import evaluate

        e = spec.eval
        task = ray.remote(num_cpus=1)(evaluate)
        ids = ray.put(prepared.ids)
        refs = [task.remote(name, path, overrides, ids, e.metric, e.batch_size, e.threads)
                for _, name, path, overrides in prepared.models]
        results = dict(zip([m[0] for m in prepared.models], ray.get(refs), strict=True))
        table = _table(prepared, results)
        print(table, flush=True)
        ctx.run.log_text(table, f"eval/{e.metric}.md")
        metrics = {f"{label}.{k}" if label != "model" else k: v for label, r in results.items() for k, v in r.items()}
        if "compare_to" in results:
            metrics["perplexity_ratio"] = results["model"]["perplexity"] / results["compare_to"]["perplexity"]
        ctx.run.log_metrics(metrics, step=0)
        return {key: round(value, 6) for key, value in metrics.items()}


def _table(prepared: Prepared, results: dict[str, dict[str, float]]) -> str:
    rows = ["| model | path | perplexity | nll/token | tokens |", "|---|---|---:|---:|---:|"]
    for label, name, path, _ in prepared.models:
        r = results[label]
        rows.append(f"| {label} | {path or name} | {r['perplexity']:.4f} | {r['nll_per_token']:.5f} | "
                    f"{int(r['tokens'])} |")
    return "\n".join(rows)
