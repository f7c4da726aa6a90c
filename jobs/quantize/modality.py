"""MBQ's gradient pass: per decoder block, the mean |dL/dY| of the caption loss over vision tokens and over
text tokens, from one FP pass over the calibration rows. The model runs block by block (core/blocks/
backward.py's backward_by_block: a no-grad forward keeping block inputs, then each block recomputed with grad
from the last down), so no whole-model activation graph is ever held.

Sums and counts are float64 Stats (sum-reduced), so data-parallel workers' shards add up to the whole pass;
the driver turns the reduced sums into weights (`modality_weights`) and keeps them in
<job>/blocks/modality_weights.json (a resume reuses them) and the export.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from core.blocks.backward import BlockBatch, backward_by_block
from core.blocks.layerwise import Layerwise
from core.data.calib_mm import TEXT, VISION, CalibRows
from jobs.quantize.algorithms.stats import Stats

MODALITIES = (("vision", VISION), ("text", TEXT))


def modality_grad_stats(lw: Layerwise, batches: Sequence[CalibRows],
                        place: Callable[[nn.Module], AbstractContextManager] | None = None) -> Stats:
    """Per block i: "grad/<modality>/i" = sum of |dL/dY_i| over that modality's token elements and
    "count/<modality>/i" their number, L = the caption loss (next-token CE on the rows' labels, summed).
    `place`: as in backward_by_block (blocks streamed through the GPU)."""
    model = lw.model
    model.requires_grad_(False)  # input gradients only
    norm, head = lw.final_norm(), model.get_output_embeddings()
    stats = Stats()
    for batch in batches:
        device = model.get_input_embeddings().weight.device
        modality = torch.tensor(batch.modality, device=device)

        def on_grad(index: int, grad: torch.Tensor, modality: torch.Tensor = modality) -> None:
            magnitude = grad.detach().abs()
            for name, code in MODALITIES:
                mask = modality == code
                stats.add(f"grad/{name}/{index}", magnitude[mask].double().sum())
                stats.add(f"count/{name}/{index}",
                          torch.tensor(float(mask.sum().item() * grad.shape[-1]), dtype=torch.float64))

        ids = torch.tensor(batch.ids, device=device)
        x, calls = lw.capture_rows(batch)
        backward_by_block(lw, norm, head, BlockBatch(ids, x, calls, torch.tensor(batch.labels, device=device)),
                          on_output_grad=on_grad, place=place)
    return stats


def gradient_pass(lw: Layerwise, batches: Sequence[CalibRows], device: torch.device, stream: bool) -> Stats:
    """modality_grad_stats with the model (kept on the CPU) borrowed onto `device` (Layerwise.weights_on: whole,
    or with `stream` each block for its own calls, twice per batch: the price of a model larger than the GPU).
    Blocks are back-propagated one at a time, so the device never holds a whole-model graph."""
    with lw.weights_on(device, stream) as place:
        return modality_grad_stats(lw, batches, place=place)


def modality_weights(stats: Stats, num_blocks: int, tokens: dict[str, int]) -> dict[str, Any]:
    """{"tokens": {vision, text}, "blocks": [{grad_vision, grad_text, w_vision, w_text}, ...]}: g_m the mean
    |dL/dY| over modality m's token elements; w_vision = g_v / g_t, w_text = 1."""
    blocks = []
    for i in range(num_blocks):
        g = {name: (stats[f"grad/{name}/{i}"] / stats[f"count/{name}/{i}"].clamp_min(1)).item()
             for name, _ in MODALITIES}
        if g["text"] <= 0:
            raise ValueError(f"mbq: block {i}: the caption loss has no gradient on text tokens")
        blocks.append({"grad_vision": g["vision"], "grad_text": g["text"], "w_vision": g["vision"] / g["text"],
                       "w_text": 1.0})
    return {"tokens": dict(tokens), "blocks": blocks}


def block_weights(weights: dict[str, Any] | None, index: int) -> dict[str, Any] | None:
    """What MBQ.token_masks takes for block `index`."""
    if not weights:
        return None
    b = weights["blocks"][index]
    return {"w_vision": b["w_vision"], "w_text": b["w_text"], "n_vision": weights["tokens"]["vision"],
            "n_text": weights["tokens"]["text"]}
