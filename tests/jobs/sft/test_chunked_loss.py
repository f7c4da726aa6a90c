"""trainer.loss_chunk_tokens: the chunked lm_head + cross entropy gives the model's own loss and gradients
(float64 tiny Qwen3 on packed rows with assistant-only labels; chunk sizes below, at and above the number of
labelled tokens)."""

from __future__ import annotations

import pytest
import torch

from core.data.packing import pack
from jobs.sft.batches import causal_lm_loss, collate
from tests.core.data.test_packing import _model, _samples


@pytest.mark.parametrize(("chunk", "compiled"), [(1, False), (7, False), (10**6, False), (7, True)])
def test_chunked_loss_and_gradients_equal_the_models(chunk: int, compiled: bool) -> None:
    """compiled: each chunk's cross entropy as the fused ops run it (inductor on this CPU; chunks of 7 and a
    shorter last one: a recompile for the changing shape)."""
    from kernels.fused import fused_ops

    model, tokenizer = _model()
    batch = collate(pack(_samples(tokenizer), max_len=512), tokenizer.pad_token_id, pad_to=512)
    assert 7 < batch.targets < 10**6

    def loss_and_grads(chunk_tokens: int) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad()
        ce = fused_ops(compiled=True).cross_entropy_sum if compiled and chunk_tokens else None
        loss = causal_lm_loss(model, batch, batch.targets, chunk_tokens, ce)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    want, want_grads = loss_and_grads(0)
    got, got_grads = loss_and_grads(chunk)
    assert got == pytest.approx(want, rel=1e-7)  # transformers' loss upcasts the logits to float32, as this does
    assert set(got_grads) == set(want_grads)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-5, atol=1e-7 * grad.abs().max().item())


def test_negative_chunk_is_a_config_error() -> None:
    from core.errors import ConfigError
    from jobs.sft.config import TrainerConfig
    from jobs.sft.driver import _check_trainer

    _check_trainer(TrainerConfig(loss_chunk_tokens=0))
    with pytest.raises(ConfigError, match=r"trainer.loss_chunk_tokens.*must be >= 0"):
        _check_trainer(TrainerConfig(loss_chunk_tokens=-1))
