"""Gradient sensitivity scores: deterministic, ~0 where quantization is harmless, shard sums == one worker,
and the block-by-block scorer against a plain whole-model autograd reference."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from core.blocks.layerwise import Layerwise
from jobs.sensitivity.scoring import (
    LinearScorer,
    model_linears,
    reduce_scores,
    score_batches,
    token_products,
)
from kernels.quant import get_op, parse_format

CANDIDATES = ["w4g32", "w8", "w8a8", "fp16"]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the CUDA copy: Triton row dots and activation deltas"))]


def _model() -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64)
    return Qwen3ForCausalLM(cfg).eval()


def _batches(n: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, 300, (2, 24), generator=gen) for _ in range(n)]


def _scores(model: torch.nn.Module, batches: list[torch.Tensor], **kwargs) -> dict[str, dict[str, float]]:
    lw = Layerwise(model)
    linears = model_linears(model, [lw.block_prefix(i) for i in range(len(lw.blocks))])
    scorer = LinearScorer(linears, CANDIDATES)
    score_batches(model, scorer, batches, **kwargs)
    return scorer.scores


def test_scores_are_deterministic_and_ordered() -> None:
    one, two = _scores(_model(), _batches()), _scores(_model(), _batches())
    assert one == two  # same seed, same data: bit-identical
    assert len(one) == 14  # 7 Linears x 2 blocks
    for name, by_cand in one.items():
        assert by_cand["fp16"] == 0.0
        # fewer bits, more damage (w8a8 adds activation rounding to w8's weight rounding)
        assert by_cand["w4g32"] > by_cand["w8"] > 0, name
        assert by_cand["w8a8"] > by_cand["w8"], name


def test_harmless_quantization_scores_zero() -> None:
    """A zero v_proj is on every grid (fake quant keeps 0), and it feeds o_proj zeros, so no format can
    change o_proj's output either. (Non-zero weights are never a fixed point of symmetric min-max
    fake quant here: the scale is max|w| / 7.5 and max|w| lands on 7, so a second pass shrinks it.)"""
    model = _model()
    with torch.no_grad():
        model.get_submodule("model.layers.1.self_attn.v_proj").weight.zero_()
    scores = _scores(model, _batches())
    for name in ("model.layers.1.self_attn.v_proj", "model.layers.1.self_attn.o_proj"):
        for cand in CANDIDATES:
            assert scores[name][cand] == 0.0, (name, cand, scores[name][cand])
    assert scores["model.layers.1.mlp.up_proj"]["w4g32"] > 0  # (q/k get no gradient either: v is 0)


@pytest.mark.parametrize("split", [1, 3])
def test_shards_add_up_to_one_worker(split: int) -> None:
    batches = _batches()
    whole = _scores(_model(), batches)
    parts = reduce_scores([_scores(_model(), batches[:split]), _scores(_model(), batches[split:])])
    for name in whole:
        for cand, value in whole[name].items():
            # float64 sums of the same per-batch terms in another order
            assert parts[name][cand] == pytest.approx(value, rel=1e-12, abs=0), (name, cand)


def _reference_scores(model: torch.nn.Module, batches: list[torch.Tensor]) -> dict[str, dict[str, float]]:
    """The definition, computed the plain way: one whole-model forward and backward of the summed loss,
    every Linear's output gradient G by autograd, dY = Q_a(X) Q_f(W)^T - X W^T as a difference of outputs."""
    lw = Layerwise(model)
    linears = model_linears(model, [lw.block_prefix(i) for i in range(len(lw.blocks))])
    model.requires_grad_(False)
    scores = {n: dict.fromkeys(CANDIDATES, 0.0) for n in linears}
    inputs, outputs = {}, {}

    def keep(name: str):
        def hook(_m: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
            inputs[name], outputs[name] = args[0], out
        return hook

    for ids in batches:
        hooks = [lin.register_forward_hook(keep(n)) for n, lin in linears.items()]
        emb = model.get_input_embeddings()(ids).requires_grad_(True)
        logits = model(inputs_embeds=emb, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(),
                                                 reduction="sum")
        grads = torch.autograd.grad(loss, [outputs[n] for n in linears])
        for h in hooks:
            h.remove()
        for (name, lin), g in zip(linears.items(), grads, strict=True):
            x = inputs[name].detach()
            for cand in CANDIDATES:
                if cand == "fp16":
                    continue
                fmt = LinearScorer({}, [cand]).formats[cand]
                xq = get_op("fake_quant_per_token")(x, fmt.act_bits) if fmt.act_bits else x
                dy = torch.nn.functional.linear(xq, get_op("fake_quant")(lin.weight, fmt)) - lin(x)
                scores[name][cand] += (g * dy).sum(-1).double().square().sum().item()
    return scores


def test_block_by_block_matches_whole_model_autograd() -> None:
    """Block recompute + chunked loss + the small-term dY give the reference's scores (float32 on CPU:
    the sums differ only by rounding; 1e-4 relative)."""
    batches = _batches(2)
    ref, ours = _reference_scores(_model(), batches), _scores(_model(), batches)
    for name in ref:
        for cand, value in ref[name].items():
            assert ours[name][cand] == pytest.approx(value, rel=1e-4, abs=1e-12), (name, cand)


def test_chunked_loss_gives_the_same_scores() -> None:
    """Logits a few tokens at a time (chunk of 3000 elements = 10 tokens of a 300-way vocabulary) vs one chunk."""
    batches = _batches(2)
    whole, chunked = _scores(_model(), batches), _scores(_model(), batches, chunk=3000)
    for name in whole:
        for cand, value in whole[name].items():
            assert chunked[name][cand] == pytest.approx(value, rel=1e-5, abs=1e-12), (name, cand)


@pytest.mark.parametrize("fmt", ["w4g128", "w8", "w8a8", "w4a8g128"])
@pytest.mark.parametrize("shape", [(256, 1024), (1024, 256)])  # out < in: G . (X dW^T); in < out: (G dW) . X
@pytest.mark.parametrize("device", DEVICES)
def test_bf16_token_products_match_the_definition(fmt: str, shape: tuple[int, int], device: str) -> None:
    """bf16 X, W, G (a GPU run): sum_t (g . dY)^2 within 2e-3 of the definition computed exactly, i.e. the
    project's float32 quantizers and float64 products. (Q_a(X) rounded to bf16 before subtracting X was
    1.7e-2 off for w8a8: dx is formed in float32; the bf16 input gradient g W carries the activation term.)"""
    gen = torch.Generator().manual_seed(0)
    out_f, in_f = shape
    x = (torch.randn(512, in_f, generator=gen) * torch.rand(512, 1, generator=gen) * 3).to(torch.bfloat16)
    w = (torch.randn(out_f, in_f, generator=gen) * 0.02).to(torch.bfloat16)
    g = torch.randn(512, out_f, generator=gen).to(torch.bfloat16)
    f = parse_format(fmt)
    wq = get_op("fake_quant")(w.float(), f).double()
    xq = get_op("fake_quant_per_token")(x.float(), f.act_bits).double() if f.act_bits else x.double()
    exact = ((xq @ wq.T - x.double() @ w.double().T) * g.double()).sum(-1).square().sum()
    on = [t.to(device) for t in (g, x, g @ w, w)]  # g @ w: the Linear's input gradient
    ours = token_products(*on, f).double().square().sum()
    assert ours.item() == pytest.approx(exact.item(), rel=2e-3)


def test_streamed_scoring_borrows_everything_it_uses(monkeypatch) -> None:
    """A model larger than the GPU (ScoringWorker): stem, final norm and lm_head borrowed, each block for its own
    calls; with every unborrowed weight NaN the scores still equal the plain ones."""
    from tests.jobs.poison import poison_unborrowed

    plain = _scores(_model(), _batches())
    model = _model()
    lw = Layerwise(model)
    poison_unborrowed(monkeypatch, lw)
    with lw.weights_on(torch.device("cpu"), stream=True) as place:
        assert _scores(model, _batches(), place=place) == plain
