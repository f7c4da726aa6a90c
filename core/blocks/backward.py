"""The block-wise backward that the sensitivity scan and MBQ's gradient pass share: a no-grad forward keeping each
block's input, the loss gradient at the last block's output from the final norm and lm_head over chunks of tokens
(never the whole float32 logits), then each block recomputed with grad and back-propagated alone, from the last
down. No whole-model activation graph is ever held, so an 8B model fits one GPU with little more than its weights.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import NamedTuple

import torch
from torch import nn

from core.blocks.layerwise import BlockCalls, Layerwise

LOGITS_CHUNK = 2**27  # logits elements per chunk of the loss (float32: 512 MiB; 1046 tokens of a 128k vocabulary)
Place = Callable[[nn.Module], AbstractContextManager]


class BlockBatch(NamedTuple):
    """One batch entering the blocks: token ids [B, T], the first block's inputs and the block calls
    (Layerwise.capture), and the next-token labels (IGNORE: no loss; None: ids)."""

    ids: torch.Tensor
    x: torch.Tensor
    calls: BlockCalls
    targets: torch.Tensor | None = None


def batch_of_ids(lw: Layerwise, ids: torch.Tensor) -> BlockBatch:
    """A text batch: its embeddings and block calls captured from the model's forward."""
    x, calls = lw.capture(ids)
    return BlockBatch(ids, x, calls)


def loss_grad(norm: nn.Module, head: nn.Module, h: torch.Tensor, ids: torch.Tensor,
              chunk: int = LOGITS_CHUNK) -> torch.Tensor:
    """dL/dh for L = the next-token cross entropy summed over tokens of head(norm(h)), the logits computed
    (and upcast to float32, as the full-model loss does) a chunk of tokens at a time."""
    h = h.detach().requires_grad_(True)
    with torch.enable_grad():
        y = norm(h)
    feats = y.detach()[:, :-1].reshape(-1, y.shape[-1])
    targets = ids[:, 1:].reshape(-1)
    feats_grad = torch.empty_like(feats)
    step = max(1, chunk // head.out_features)
    for start in range(0, len(targets), step):
        part = feats[start:start + step].detach().requires_grad_(True)
        with torch.enable_grad():
            logits = head(part).float()
            loss = nn.functional.cross_entropy(logits, targets[start:start + step], reduction="sum")
        loss.backward()
        feats_grad[start:start + step] = part.grad
        del logits, loss
    y_grad = torch.zeros_like(y)
    y_grad[:, :-1] = feats_grad.view(y.shape[0], -1, y.shape[-1])
    y.backward(y_grad)
    return h.grad


@torch.no_grad()
def forward_keeping_inputs(lw: Layerwise, batch: BlockBatch, place: Place) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A no-grad forward through the decoder blocks: every block's input and the last block's output;
    `place(block)` around each call."""
    x, inputs = batch.x, []
    for index, block in enumerate(lw.blocks):
        inputs.append(x)
        with place(block):
            x = lw.run_block(index, x, batch.calls)
    return inputs, x


def backward_by_block(lw: Layerwise, norm: nn.Module, head: nn.Module, batch: BlockBatch,
                      chunk: int = LOGITS_CHUNK, *, on_output_grad: Callable[[int, torch.Tensor], None] | None = None,
                      place: Place | None = None) -> None:
    """One batch: no-grad forward keeping block inputs, the loss gradient, then each block recomputed with
    grad and back-propagated from the last down (Linear output-gradient hooks fire in its backward).
    `on_output_grad(i, dL/dy_i)` sees each block's output gradient (MBQ's modality weights), last block first;
    `place(block)`: a context each block call runs in (a model larger than the GPU: the block borrowed onto it)."""
    place = place or (lambda _block: nullcontext())
    inputs, x = forward_keeping_inputs(lw, batch, place)
    grad = loss_grad(norm, head, x, batch.ids if batch.targets is None else batch.targets, chunk)
    for index in reversed(range(len(inputs))):
        if on_output_grad is not None:
            on_output_grad(index, grad)
        x = inputs.pop().detach().requires_grad_(True)
        with place(lw.blocks[index]), torch.enable_grad():
            y = lw.run_block(index, x, batch.calls)
            y.backward(grad)
        grad = x.grad
        del x, y
