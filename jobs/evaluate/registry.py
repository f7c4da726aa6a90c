"""Evaluators by `eval.metric`: each builds its held-out inputs once in the driver (so every model sees the
same ones), scores one model in its Ray actor, and turns raw scores into metrics, table columns and comparisons."""

from __future__ import annotations

from typing import Any, Protocol

from core.registry import Registry


class Evaluator(Protocol):
    def prepare(self, spec: Any, tokenizer: Any, compare_cfg: Any | None) -> Any:
        """Driver: validate eval.* and build the inputs (numpy, shipped through Ray's object store)."""

    def score(self, model: Any, inputs: Any, e: Any) -> dict[str, Any]:
        """In the model's Ray actor: raw scores of one model on the inputs."""

    def summarize(self, raw: dict[str, Any], inputs: Any, tokenizer: Any) -> dict[str, float]:
        """Driver: the metrics of one model from its raw scores."""

    def columns(self, inputs: Any) -> list[tuple[str, str, str]]:
        """Table columns: (header, metric key, format spec)."""

    def compare(self, model: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
        """Metrics of the model against eval.compare_to's (ratios, deltas)."""


EVALUATORS: Registry[Evaluator] = Registry("evaluator", "eval.metric")
EVALUATORS.register("perplexity", "jobs.evaluate.perplexity:PERPLEXITY")
EVALUATORS.register("caption", "jobs.evaluate.caption:CAPTION")
EVALUATORS.register("lm_eval", "jobs.evaluate.harness:LM_EVAL")
