"""Loss-delta scores (jobs/sensitivity/loss_delta.py) against the plain whole-model loss with one Linear quantized,
zero where quantization is harmless, and additive over batches (shards of workers)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.blocks.layerwise import Layerwise
from jobs.sensitivity.loss_delta import loss_delta_scores, quantized
from jobs.sensitivity.scoring import model_linears, reduce_scores
from kernels.quant import get_op, parse_target
from tests.jobs.sensitivity.test_scoring import _batches, _model

CANDIDATES = ["w4g32", "w8a8", "fp16"]


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    lw = Layerwise(model)
    return model_linears(model, [lw.block_prefix(i) for i in range(len(lw.blocks))])


def _whole_model_loss(model: nn.Module, ids: torch.Tensor) -> float:
    """The reference: the model's own forward, the summed next-token cross entropy in float64."""
    logits = model(input_ids=ids).logits[:, :-1].double()
    return float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                             reduction="sum"))


def test_loss_delta_is_the_whole_model_loss_change() -> None:
    """In float64 (so that rounding is far below the changes measured), per Linear and candidate."""
    model, batches = _model().double(), _batches(2)
    linears = _linears(model)
    ours = loss_delta_scores(model, linears, CANDIDATES, batches, chunk=1000)  # chunks of 3 tokens
    with torch.no_grad():
        base = sum(_whole_model_loss(model, ids) for ids in batches)
        for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
            for cand in ("w4g32", "w8a8"):
                with quantized(linears[name], parse_target(cand)):
                    expected = sum(_whole_model_loss(model, ids) for ids in batches) - base
                assert abs(expected) > 1e-9 * base  # a change far above float64 rounding (1e-16) of the ~530 loss
                assert ours[name][cand] == pytest.approx(expected, rel=1e-6), (name, cand)
                assert ours[name]["fp16"] == 0.0
    assert ours["model.layers.0.self_attn.q_proj"]["w4g32"] != 0.0


def test_quantized_restores_the_linear_and_quantizes_inputs_for_act_formats() -> None:
    model = _model()
    linear = model.get_submodule("model.layers.0.mlp.up_proj")
    x = torch.randn(3, linear.in_features, generator=torch.Generator().manual_seed(0))
    before, weight = linear(x), linear.weight.data.clone()
    fmt = parse_target("w8a8")
    with quantized(linear, fmt):
        wq = get_op("fake_quant")(weight, fmt)
        assert torch.equal(linear(x), nn.functional.linear(get_op("fake_quant_per_token")(x, 8), wq))
    assert torch.equal(linear.weight.data, weight) and torch.equal(linear(x), before)


def test_harmless_quantization_changes_no_loss() -> None:
    """A zero v_proj is on every grid and feeds o_proj zeros (test_scoring.py says why): quantizing either leaves
    the model's function unchanged, so the measured loss change is exactly 0."""
    model = _model()
    with torch.no_grad():
        model.get_submodule("model.layers.1.self_attn.v_proj").weight.zero_()
    scores = loss_delta_scores(model, _linears(model), ["w4g32", "w8"], _batches(2))
    for name in ("model.layers.1.self_attn.v_proj", "model.layers.1.self_attn.o_proj"):
        assert scores[name] == {"w4g32": 0.0, "w8": 0.0}, name
    assert scores["model.layers.1.mlp.up_proj"]["w4g32"] != 0.0


def test_shards_add_up_and_repeat() -> None:
    model, batches = _model(), _batches(3)
    whole = loss_delta_scores(model, _linears(model), CANDIDATES, batches)
    assert whole == loss_delta_scores(model, _linears(model), CANDIDATES, batches)  # deterministic
    parts = reduce_scores([loss_delta_scores(model, _linears(model), CANDIDATES, batches[:1]),
                           loss_delta_scores(model, _linears(model), CANDIDATES, batches[1:])])
    for name, by_cand in whole.items():
        for cand, value in by_cand.items():
            assert parts[name][cand] == pytest.approx(value, rel=1e-12, abs=1e-12), (name, cand)


def test_given_inputs_and_ignored_targets_as_a_vlm_batch() -> None:
    """A BlockBatch (a VLM's merged embeddings as the first block's input, caption labels with IGNORE = -100
    positions): the same loss changes as the token ids give when those are the embeddings and labels."""
    from core.blocks.backward import BlockBatch
    from core.blocks.layerwise import Layerwise

    model, (ids,) = _model().double(), _batches(1)
    targets = ids.clone()
    targets[:, :10] = -100  # a prompt: no loss
    linears = _linears(model)
    embeds, calls = Layerwise(model).capture(ids)
    given = loss_delta_scores(model, linears, CANDIDATES, [BlockBatch(ids, embeds, calls, targets)])
    with torch.no_grad():
        def loss(batch_targets: torch.Tensor) -> float:
            logits = model(input_ids=ids).logits[:, :-1]
            return float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     batch_targets[:, 1:].reshape(-1), reduction="sum"))

        name = "model.layers.1.mlp.gate_proj"
        base = loss(targets)
        with quantized(linears[name], parse_target("w4g32")):
            expected = loss(targets) - base
    assert given[name]["w4g32"] == pytest.approx(expected, rel=1e-6)
    assert given[name]["w4g32"] != pytest.approx(loss_delta_scores(model, linears, CANDIDATES, [ids])[name]["w4g32"])
