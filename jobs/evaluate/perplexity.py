"""Perplexity on fixed token blocks: exp(mean next-token NLL over every predicted position); with eval.compare_to,
the model against that reference on the same batches: per-token KL divergence (mean, p99, max), top-1 agreement
and the perplexity delta (jobs/evaluate/divergence.py).

A vision-language model (its dir, or a quantized export of one) is scored on text tokens only: given no image
inputs it is exactly its language model (tested to equality), so eval.compare_to=<base LLM dir> compares a
VLM's text ability with the LLM it started from, over the same tokens (eval 6a of issue 5)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.data.calib import token_blocks
from core.errors import ConfigError
from jobs.evaluate.divergence import nll_metrics, pair_metrics, token_scores
from jobs.evaluate.sharded import concat, slices


def load_model(name: str, path: str | None, overrides: dict[str, Any], attn: str = "sdpa", seed: int = 0,
               dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Any:
    """A quantized export (its dequantized weights: what a serving engine computes with) or any model the registry
    builds, in `dtype` on `device`."""
    from core.models import ModelConfig, build_model
    from core.quant.load import load_quantized, quant_config_of

    if path and quant_config_of(path) is not None:
        model = load_quantized(path, dtype=dtype, attn_implementation=attn, device=device)
    else:
        cfg = ModelConfig(name=name, path=path, overrides=dict(overrides), attn_implementation=attn, seed=seed)
        with torch.device(device):  # transformers loads onto the context's device
            model = build_model(cfg, dtype).eval()
    return model.to(device)  # a no-op there; anything a model class left elsewhere follows


@torch.no_grad()
def score_tokens(models: dict[str, Any], ids: np.ndarray, batch_size: int) -> dict[str, Any]:
    """Per-token NLL of "model" (and of "compare_to", with their KL and top-1 agreement under "pair") over the
    batches of `ids` in order, float32 numpy; both models' logits of a batch are compared, then dropped."""
    device = models["model"].device
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(ids), batch_size):
        batch = torch.tensor(ids[start : start + batch_size], device=device)  # a copy: Ray's arrays are read-only
        logits = {label: model(input_ids=batch, use_cache=False).logits for label, model in models.items()}
        for row in range(len(batch)):
            ref = logits["compare_to"][row, :-1] if "compare_to" in logits else None
            for key, value in token_scores(logits["model"][row, :-1], batch[row, 1:], ref).items():
                parts.setdefault(key, []).append(value)
        del logits  # before the next batch's forward
    out = {key: torch.cat(value).cpu().numpy() for key, value in parts.items()}
    raw: dict[str, Any] = {"model": {"nll": out["nll"]}, "input_tokens": int(ids.size)}
    if "kl" in out:
        raw.update(compare_to={"nll": out["ref_nll"]}, pair={"kl": out["kl"], "agree": out["agree"]})
    return raw


def perplexity(model: Any, ids: np.ndarray, batch_size: int) -> dict[str, float]:
    """One model's perplexity over `ids` (the job's own computation, in this process)."""
    return nll_metrics(score_tokens({"model": model}, ids, batch_size)["model"]["nll"])


class Perplexity:
    """Held-out text cut into eval.num_samples x eval.seq_len token blocks (core/data/calib.py), scored in batches of
    eval.batch_size; the batches are split over the workers in order."""

    compare_columns = [("KL mean", "kl_mean", ".4g"), ("KL p99", "kl_p99", ".4g"),
                       ("top-1 agree", "top1_agreement", ".4f"), ("ppl delta", "delta_perplexity", "+.4f")]

    def prepare(self, spec: Any, tokenizer: Any, compare_cfg: Any | None) -> np.ndarray:
        e = spec.eval
        return token_blocks(e.path, e.format, tokenizer, e.num_samples, e.seq_len, e.seed, e.text_field, "eval")

    def split(self, ids: np.ndarray, e: Any, parts: int) -> list[np.ndarray]:
        batches = -(-len(ids) // e.batch_size)
        if parts > batches:
            raise ConfigError("eval.num_workers", f"{parts} workers but only {batches} batches of "
                              f"eval.batch_size={e.batch_size}")
        return [ids[part.start * e.batch_size : part.stop * e.batch_size] for part in slices(batches, parts)]

    def score_models(self, models: dict[str, Any], ids: np.ndarray, e: Any) -> dict[str, Any]:
        return score_tokens(models, ids, e.batch_size)

    def merge(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        return concat(parts)

    def summarize(self, raw: dict[str, Any], inputs: np.ndarray, tokenizer: Any) -> dict[str, float]:
        return nll_metrics(raw["nll"])

    def columns(self, inputs: np.ndarray) -> list[tuple[str, str, str]]:
        return [("perplexity", "perplexity", ".4f"), ("nll/token", "nll_per_token", ".5f"), ("tokens", "tokens", ".0f")]

    def compare(self, model: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
        return {"perplexity_ratio": model["perplexity"] / reference["perplexity"],
                "delta_perplexity": model["perplexity"] - reference["perplexity"]}

    def paired(self, raw: dict[str, Any]) -> dict[str, float]:
        """Metrics of the model against compare_to from both models' per-token scores on the same positions."""
        return pair_metrics(raw["pair"]["kl"], raw["pair"]["agree"])

    def figures(self, raw: dict[str, Any]) -> dict[str, Any]:
        from jobs.evaluate.report import kl_histogram

        figure = kl_histogram(raw["pair"]["kl"]) if "pair" in raw else None
        return {"kl_histogram.png": figure} if figure is not None else {}


PERPLEXITY = Perplexity()
