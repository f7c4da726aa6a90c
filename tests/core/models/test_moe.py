"""core/models/moe.py: fused experts as one Linear per expert projection; every expert calibrated on every token,
the block's output still the router's."""

from __future__ import annotations

import copy

import pytest
import torch

from core.models.moe import ExpertList, calibrate_all_experts, expert_lists, unfuse_experts

TOKENS, EXPERTS, TOP_K = 24, 8, 2


@pytest.fixture(scope="module")
def fused():
    from transformers import Qwen3MoeConfig

    from core.models.auto import from_config

    config = Qwen3MoeConfig(vocab_size=300, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            num_experts=EXPERTS, num_experts_per_tok=TOP_K)
    torch.manual_seed(0)
    return from_config(config).eval()


def test_per_expert_linears_share_the_fused_weights_and_compute_the_same(fused) -> None:
    model = copy.deepcopy(fused)
    ids = torch.randint(0, 300, (2, TOKENS // 2), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(ids).logits
    fused_up = model.model.layers[0].mlp.experts.gate_up_proj
    assert unfuse_experts(model) == 2 and unfuse_experts(model) == 0  # once
    experts = model.model.layers[0].mlp.experts
    assert isinstance(experts, ExpertList) and len(experts) == EXPERTS
    assert experts[3].up_proj.weight.data_ptr() == fused_up[3, 32:].data_ptr()  # a view, no copy
    names = {n for n, _ in model.named_parameters() if ".experts." in n}
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in names and len(names) == 2 * EXPERTS * 3
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference, rtol=0, atol=1e-5)  # float32, other GEMM order


def test_every_expert_sees_every_token_while_the_output_follows_the_router(fused) -> None:
    model = copy.deepcopy(fused)
    unfuse_experts(model)
    block = model.model.layers[0]
    x = torch.randn(1, TOKENS, 64, generator=torch.Generator().manual_seed(2))
    seen: dict[str, int] = {}
    hooks = [linear.register_forward_hook(lambda m, args, out, n=name: seen.__setitem__(
        n, seen.get(n, 0) + args[0].reshape(-1, args[0].shape[-1]).shape[0]))
        for name, linear in block.mlp.experts.named_modules() if isinstance(linear, torch.nn.Linear)]
    with torch.no_grad():
        routed_only = block.mlp(x)
        before = dict(seen)
        calibrate_all_experts(model)
        seen.clear()
        all_tokens = block.mlp(x)
    for hook in hooks:
        hook.remove()
    assert min(before.get(f"{e}.gate_proj", 0) for e in range(EXPERTS)) < TOKENS  # routed: a subset each
    assert all(seen[f"{e}.{p}"] == TOKENS for e in range(EXPERTS) for p in ("gate_proj", "up_proj", "down_proj"))
    torch.testing.assert_close(all_tokens, routed_only, rtol=0, atol=1e-6)
    routed = dict(expert_lists(model))["model.layers.0.mlp.experts"].routed
    assert int(routed.sum()) == TOKENS * TOP_K  # counted from the router's choices, once per forward


@pytest.mark.parametrize("model_type", ["qwen3_moe", "mixtral", "deepseek_v3", "gpt_oss"])
def test_every_moe_mapping_folds_without_changing_the_block_or_its_routing(model_type: str, tmp_path) -> None:
    """Random scales folded along every mapping of an MoE block (the norm into every expert's gate/up with the router
    scaled alongside, each expert's up into its down): the block computes the same function, the router picks the
    same experts."""
    from core.blocks.layerwise import Layerwise
    from core.blocks.mappings import fold_scales, resolve_mappings
    from core.models.families import family_of
    from tests.jobs.family_models import _text

    path = _text(tmp_path, model_type)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    lw = Layerwise(model)
    block = lw.blocks[-1]  # DeepSeek-V3: its MoE block (the first is dense)
    mappings, _ = resolve_mappings(block, family_of(model))
    assert any(m.passive for m in mappings)  # the router rides along
    assert sum(".experts." in m.prev_name for m in mappings) == (0 if model_type == "gpt_oss" else 4)
    x = torch.randn(1, 12, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    routes, calls = [], []
    router = block.mlp.router if model_type == "gpt_oss" else block.mlp.gate
    hook = router.register_forward_hook(lambda m, args, out: routes.append(out[-1].clone()))
    position = torch.arange(12)[None]
    embeddings = model.model.rotary_emb(x, position)
    calls = dict(position_embeddings=embeddings, attention_mask=None, position_ids=position)
    with torch.no_grad():
        before = block(x, **calls)
        generator = torch.Generator().manual_seed(4)
        for m in mappings:
            fold_scales(m, torch.rand(m.linears[0].in_features, generator=generator) + 0.5)
        after = block(x, **calls)
    hook.remove()
    before, after = (t[0] if isinstance(t, tuple) else t for t in (before, after))
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert torch.equal(routes[0], routes[1])  # the same experts for every token
