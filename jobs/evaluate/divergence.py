"""Per-token next-token scores of a model, alone or against a reference on the same positions (what llama.cpp's
perplexity tool reports): the target's negative log-likelihood, the KL divergence KL(P_ref || P_model) of the two
next-token distributions and whether their argmax agree. Computed from the logits a chunk of positions at a time, so
a batch's log-probs over the full vocabulary never exist at once: in float32 on a GPU (the logits are bf16, far
coarser), in float64 on a CPU, where float32 lost 1e-4 of a small KL to the cancellation in log p - log q (tests:
a float64 reference); reduced over every token in float64 by the driver, where the p99 is taken over all the
per-token values (exact, no sketch: they are one float per token)."""

from __future__ import annotations

import numpy as np
import torch

# log-prob elements per chunk: 256 MiB each in float32, about 500 positions of a 128k vocabulary
CHUNK_ELEMENTS = 2**26


def token_scores(logits: torch.Tensor, targets: torch.Tensor, ref: torch.Tensor | None = None,
                 ) -> dict[str, torch.Tensor]:
    """logits, ref: [N, V] the model's and the reference's logits at N positions; targets: [N] the next tokens.
    Per position: nll, and with `ref`: ref_nll, kl (KL(P_ref || P_model), nats) and agree (argmax equal)."""
    step = max(1, CHUNK_ELEMENTS // logits.shape[-1])
    dtype = torch.float64 if logits.device.type == "cpu" else torch.float32
    parts: dict[str, list[torch.Tensor]] = {"nll": [], "ref_nll": [], "kl": [], "agree": []}
    for start in range(0, len(targets), step):
        target = targets[start : start + step, None]
        log_q = torch.log_softmax(logits[start : start + step], -1, dtype=dtype)
        parts["nll"].append(-log_q.gather(-1, target)[:, 0])
        if ref is None:
            continue
        log_p = torch.log_softmax(ref[start : start + step], -1, dtype=dtype)
        parts["ref_nll"].append(-log_p.gather(-1, target)[:, 0])
        parts["kl"].append((log_p.exp() * (log_p - log_q)).sum(-1))
        parts["agree"].append(log_q.argmax(-1) == log_p.argmax(-1))  # ties: the first index, as greedy decoding
    return {key: torch.cat(value) for key, value in parts.items() if value}


def nll_metrics(nll: np.ndarray) -> dict[str, float]:
    """Perplexity from per-token NLLs, summed in float64 (the same array, however it was sharded: the same sum)."""
    mean = float(np.sum(nll, dtype=np.float64)) / len(nll)
    with np.errstate(over="ignore"):  # a diverging model: inf, reported as a numeric error by the driver
        return {"perplexity": float(np.exp(mean)), "nll_per_token": mean, "tokens": float(len(nll))}


def pair_metrics(kl: np.ndarray, agree: np.ndarray) -> dict[str, float]:
    """KL mean, p99 (numpy's linear interpolation over every token's value) and max; top-1 agreement."""
    values = kl.astype(np.float64)
    return {"kl_mean": float(values.sum()) / len(values), "kl_p99": float(np.quantile(values, 0.99)),
            "kl_max": float(values.max()), "top1_agreement": float(np.count_nonzero(agree)) / len(agree)}
