"""The causal-LM loss without the [tokens, vocab] logits (`trainer.loss_chunk_tokens` > 0).

The model's own loss materialises the logits of every token and upcasts them to float32: for Qwen3's
151,936-word vocabulary that is 2.5 GB per 4096-token row, plus as much again for their gradient. Here the
model runs with `logits_to_keep=1`, the final norm's output is taken by a hook, and lm_head + cross entropy
run over the target tokens only, a chunk at a time (as many chunks on every rank), each chunk recomputed in
the backward (torch.utils.checkpoint), so at most one chunk's logits exist. Same sum / num_items as the model's loss
(tests/jobs/sft/test_chunked_loss.py); the price is one more lm_head forward per chunk in the backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from core.data.tokenize import IGNORE
from kernels.fused.ops import cross_entropy_sum


def chunked_lm_loss(model: nn.Module, batch: Any, num_items: float | torch.Tensor, chunk_tokens: int,
                    cross_entropy: Callable | None = None) -> torch.Tensor:
    """Sum of next-token cross entropies over `batch`'s labelled tokens / num_items; `model` an HF causal LM
    or VLM, or a DeepSpeed engine around one (its forward runs through the engine, so ZeRO-3 hooks fire).
    `cross_entropy(logits, targets)`: the summed loss of a chunk (kernels/fused: compiled where fused ops are on;
    None: eager)."""
    cross_entropy = cross_entropy or cross_entropy_sum
    hf = getattr(model, "module", model)
    norm, head = hf.get_decoder().norm, hf.get_output_embeddings()
    box: dict[str, torch.Tensor] = {}
    handle = norm.register_forward_hook(lambda _m, _args, out: box.__setitem__("h", out))
    try:
        model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, logits_to_keep=1,
              **batch.images)
    finally:
        handle.remove()
    h = box["h"]
    if not batch.shifted:
        h, labels = h[:, :-1], batch.labels[:, 1:]
    else:
        labels = batch.labels
    feats, targets = h.reshape(-1, h.shape[-1]), labels.reshape(-1)
    keep = targets != IGNORE
    feats, targets = feats[keep], targets[keep]
    total = h.new_zeros((), dtype=torch.float32)
    for k in range(_chunk_count(len(targets), chunk_tokens, h.device)):
        part = slice(k * chunk_tokens, (k + 1) * chunk_tokens)
        total = total + checkpoint(_summed_ce, head, feats[part], targets[part], cross_entropy, use_reentrant=False)
    return total / num_items


def _summed_ce(head: nn.Module, feats: torch.Tensor, targets: torch.Tensor, cross_entropy: Callable) -> torch.Tensor:
    return cross_entropy(head(feats), targets)


def _chunk_count(tokens: int, chunk_tokens: int, device: torch.device) -> int:
    """Chunks for `tokens`, the most over all ranks: under ZeRO-3 each lm_head call gathers its weight with a
    collective, so every rank must make as many calls (a rank with fewer targets runs empty chunks). A rank
    with 2 chunks against another's 3 hung the gloo test at step 2."""
    count = -(-tokens // chunk_tokens)
    if dist.is_available() and dist.is_initialized():
        most = torch.tensor([count], device=device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        count = int(most.item())
    return count
