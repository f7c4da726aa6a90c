"""Perplexity on fixed token blocks: exp(mean next-token NLL over every predicted position).

A vision-language model (its dir, or a quantized export of one) is scored on text tokens only: given no image
inputs it is exactly its language model (tested to equality), so eval.compare_to=<base LLM dir> compares a
VLM's text ability with the LLM it started from, over the same tokens (eval 6a of issue 5)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.data.calib import token_blocks


def load_model(name: str, path: str | None, overrides: dict[str, Any], attn: str = "sdpa", seed: int = 0) -> Any:
    """A quantized export (fake-quant reload) or any model the registry builds, float32 on CPU."""
    from core.models import ModelConfig, build_model
    from core.quant.load import load_quantized, quant_config_of

    if path and quant_config_of(path) is not None:
        return load_quantized(path, attn_implementation=attn)
    cfg = ModelConfig(name=name, path=path, overrides=dict(overrides), attn_implementation=attn, seed=seed)
    return build_model(cfg, torch.float32).eval()


@torch.no_grad()
def perplexity(model: Any, ids: np.ndarray, batch_size: int) -> dict[str, float]:
    nll, count = 0.0, 0
    for start in range(0, len(ids), batch_size):
        batch = torch.tensor(ids[start : start + batch_size])
        logits = model(input_ids=batch).logits[:, :-1].float()
        target = batch[:, 1:]
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum").item()
        count += target.numel()
    return {"perplexity": math.exp(nll / count), "nll_per_token": nll / count, "tokens": float(count)}


class Perplexity:
    """Held-out text cut into eval.num_samples x eval.seq_len token blocks (core/data/calib.py)."""

    def prepare(self, spec: Any, tokenizer: Any, compare_cfg: Any | None) -> np.ndarray:
        e = spec.eval
        return token_blocks(e.path, e.format, tokenizer, e.num_samples, e.seq_len, e.seed, e.text_field, "eval")

    def score(self, model: Any, inputs: np.ndarray, e: Any) -> dict[str, float]:
        return perplexity(model, inputs, e.batch_size)

    def summarize(self, raw: dict[str, float], inputs: np.ndarray, tokenizer: Any) -> dict[str, float]:
        return raw

    def columns(self, inputs: np.ndarray) -> list[tuple[str, str, str]]:
        return [("perplexity", "perplexity", ".4f"), ("nll/token", "nll_per_token", ".5f"), ("tokens", "tokens", ".0f")]

    def compare(self, model: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
        return {"perplexity_ratio": model["perplexity"] / reference["perplexity"]}


PERPLEXITY = Perplexity()


class ModelScorer:
    """A Ray actor: one model (built with model.seed) loaded as the actor starts (on an attached cluster, while the
    driver prepares the inputs), then scored by the eval.metric's evaluator in this one process."""

    def __init__(self, name: str, path: str | None, overrides: dict, e: Any, seed: int = 0) -> None:
        torch.set_num_threads(e.threads)
        self.model, self.e = load_model(name, path, overrides, seed=seed), e

    def score(self, inputs: Any) -> dict[str, Any]:
        from jobs.evaluate.registry import EVALUATORS

        return EVALUATORS.get(self.e.metric).score(self.model, inputs, self.e)
