"""AWQ scores a lone Linear's candidates from the Gram matrix of its inputs (tr(D G D^T)) instead of capturing the
inputs: the same losses as running the Linear on them, on a dense block (o_proj, down_proj) and on an MoE block
(each expert's down_proj on its routed tokens)."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3MoeConfig
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeForCausalLM

from core.models.moe import calibrate_all_experts, unfuse_experts
from jobs.quantize.algorithms import ALGORITHMS
from jobs.quantize.algorithms.awq import AWQ
from jobs.quantize.algorithms.stats import Stats
from kernels.quant import parse_format

# float64 Gram sums against float32 forwards of the candidates: the forward's rounding of each output (~1e-7 of
# it) shows in a squared error that is ~1e-2 of the output's size at ~1e-5 relative
LOSS_RTOL = 1e-4


def _losses(block, run_block, xs, by_gram: bool, monkeypatch) -> Stats:
    monkeypatch.setattr(AWQ, "_scored_by_gram", lambda self, m: by_gram and len(m.linears) == 1)
    algo = ALGORITHMS.get("awq")({"stats_dtype": "float64", "n_grid": 6})
    algo.prepare(block, parse_format("w3g32"), run_block)
    prior = algo.observe_shard(block, xs, pass_idx=0)
    return algo.observe_shard(block, xs, pass_idx=1, prior=prior)


def _check(by_gram: Stats, by_forward: Stats, lone: list[str]) -> None:
    assert list(by_gram) == list(by_forward)
    for key in by_gram:
        got, want = by_gram[key], by_forward[key]
        if key.removeprefix("awq_loss/") in lone:
            torch.testing.assert_close(got, want, rtol=LOSS_RTOL, atol=0)
            assert int(torch.argmin(got)) == int(torch.argmin(want)), key
        else:  # scopes of several Linears are scored by their forward either way
            assert torch.equal(got, want), key


def test_dense_block_lone_linears_scored_by_gram_as_by_forward(tiny, monkeypatch) -> None:
    block = tiny.fresh()
    by_gram = _losses(block, tiny.run_block, tiny.calib[:2], True, monkeypatch)
    by_forward = _losses(block, tiny.run_block, tiny.calib[:2], False, monkeypatch)
    assert any(v.abs().sum() > 0 for v in by_gram.values.values())
    _check(by_gram, by_forward, ["self_attn.v_proj", "mlp.up_proj"])


@pytest.fixture(scope="module")
def moe_block():
    torch.manual_seed(0)
    config = Qwen3MoeConfig(hidden_size=64, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                            num_attention_heads=2, num_key_value_heads=2, head_dim=32, num_hidden_layers=1,
                            norm_topk_prob=True)
    config._attn_implementation = "sdpa"
    model = Qwen3MoeForCausalLM(config).eval()  # its post_init initializes the fused experts (a bare layer's are empty)
    block = model.model.layers[0]
    assert unfuse_experts(block) == 1
    calibrate_all_experts(block)  # pass 0's statistics from every token, as the worker runs it
    rotary = model.model.rotary_emb

    def run_block(b, x, k=0):
        pos = torch.arange(x.shape[1]).unsqueeze(0).expand(x.shape[0], -1)
        return b(x, position_embeddings=rotary(x, pos), position_ids=pos)

    gen = torch.Generator().manual_seed(1)
    return block, run_block, [torch.randn(2, 16, 64, generator=gen) for _ in range(2)]


def test_moe_experts_down_proj_scored_by_gram_of_routed_tokens(moe_block, monkeypatch) -> None:
    block, run_block, xs = moe_block
    with torch.no_grad():
        by_gram = _losses(block, run_block, xs, True, monkeypatch)
        by_forward = _losses(block, run_block, xs, False, monkeypatch)
    lone = ["self_attn.v_proj", *(f"mlp.experts.{e}.up_proj" for e in range(4))]
    assert {f"awq_loss/{name}" for name in lone} <= set(by_gram)
    _check(by_gram, by_forward, lone)
