"""Bad configs fail early with one-line ConfigErrors naming the field."""

from __future__ import annotations

import pytest
from torch import nn
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

from core.errors import ConfigError
from jobs.quantize.algorithms import ALGORITHMS
from kernels.quant import parse_format


def _raises(fn, field: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        fn()
    text = str(err.value)
    assert err.value.field == field and message in text and "\n" not in text, text


def test_unknown_algorithm() -> None:
    _raises(lambda: ALGORITHMS.get("gptqq"), "quant.algorithm",
            "unknown quantization algorithm 'gptqq' (known: awq, gptq, mbq, rtn, smoothquant)")


def test_unknown_or_bad_options() -> None:
    gptq = ALGORITHMS.get("gptq")
    _raises(lambda: gptq({"percdamp": 0.01, "dampp": 1}), "quant.gptq", "unknown option(s) dampp (known: ")
    _raises(lambda: gptq({"percdamp": 0}), "quant.gptq.percdamp", "must be in (0, 1], got 0")
    _raises(lambda: ALGORITHMS.get("awq")({"n_grid": 0}), "quant.awq.n_grid", "must be >= 1")
    _raises(lambda: ALGORITHMS.get("smoothquant")({"alpha": 1.5}), "quant.smoothquant.alpha", "in [0, 1]")
    _raises(lambda: ALGORITHMS.get("rtn")({"stats_dtype": "half"}), "quant.rtn.stats_dtype", "float32 or float64")


def test_unsupported_bits_and_group_size() -> None:
    _raises(lambda: parse_format("w6g128"), "quant.format", "unsupported weight bits 6")
    _raises(lambda: parse_format("w4g256"), "quant.format", "unsupported group size 256")


@pytest.mark.parametrize("algorithm", ["rtn", "gptq", "awq", "smoothquant"])
def test_group_size_must_divide_in_features(algorithm: str) -> None:
    config = Qwen3Config(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=4,
                         head_dim=16, num_hidden_layers=1)
    block = Qwen3DecoderLayer(config, 0)
    fmt = parse_format("w4a8g64" if algorithm == "smoothquant" else "w4g64")
    _raises(lambda: ALGORITHMS.get(algorithm)().prepare(block, fmt), "quant.format",
            f"group size 64 of '{fmt.name}' does not divide in_features=96 of module 'mlp.down_proj'")


def test_smoothquant_needs_activation_format() -> None:
    block = nn.Module()
    _raises(lambda: ALGORITHMS.get("smoothquant")().prepare(block, parse_format("w4g128")), "quant.format",
            "smoothquant needs an activation-quantized format")


def test_awq_needs_known_wiring() -> None:
    block = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 64))
    _raises(lambda: ALGORITHMS.get("awq")().prepare(block, parse_format("w4g32")), "quant.algorithm",
            "awq needs the wiring of block 'Sequential', which matches no family with mappings (known: ")


@pytest.mark.parametrize(("overrides", "expected"), [
    (["quant.bits=3", "quant.group_size=128"], "w3g128"),  # the spelling
    (["quant.format=w8", "quant.group_size=64"], "w8g64"),
    (["quant.group_size=0"], "w4"),  # per channel
    (["quant=smoothquant", "quant.bits=4"], "w4a8"),  # activation bits kept
    ([], "w4g128"),
])
def test_bits_and_group_size_fold_into_the_format(overrides: list[str], expected: str) -> None:
    from orchestrator.compose import compose, to_spec

    assert to_spec(compose(["job=quantize", *overrides])).quant.format == expected


def test_unsupported_bits_from_the_long_spelling() -> None:
    from orchestrator.compose import compose, to_spec

    fmt = to_spec(compose(["job=quantize", "quant.bits=5"])).quant.format
    _raises(lambda: parse_format(fmt), "quant.format", "unsupported weight bits 5 in 'w5g128'")


SPLIT_QKV = {  # recipe choices -> the formats q, k, v get (quant.format w4g128 for those it does not name)
    "one_each": ({"q_proj": "w4g128", "k_proj": "w8", "v_proj": "w4g128"}, "w4g128, w8, w4g128"),
    "default_for_the_rest": ({"q_proj": "fp16"}, "fp16, w4g128, w4g128"),
}


@pytest.mark.parametrize("case", sorted(SPLIT_QKV))
def test_mixed_recipe_splitting_a_fused_set_is_refused(case: str, tmp_path, cli_in_process) -> None:
    """vLLM refuses q/k/v in different schemes: quant=mixed says so in one line, exit 2, before Ray or calibration."""
    import json

    import ray

    from tests.jobs.conftest import TINY_QUANT

    choices, got = SPLIT_QKV[case]
    (tmp_path / "report.json").write_text(json.dumps(
        {"choices": {f"model.layers.1.self_attn.{leaf}": fmt for leaf, fmt in choices.items()}}))
    result = cli_in_process([*TINY_QUANT, "quant=mixed", f"quant.recipe={tmp_path}", "tracking.enabled=false"],
                            tmp_path / "runs")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: config error: quant.recipe: model.layers.1.self_attn.q_proj, k_proj, v_proj are fused "
                      f"by serving engines and must share one format (got {got})"], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not ray.is_initialized()


def test_a_recipe_splitting_a_blocks_experts_is_refused() -> None:
    """vLLM runs a block's experts as one fused MoE layer, one scheme for every expert's gate, up and down."""
    import torch

    from core.blocks.layerwise import Layerwise, block_linears_in_features
    from core.models.auto import from_config
    from jobs.quantize.driver import _check_serving_sets
    from tests.jobs.family_models import text_config

    with torch.device("meta"):
        model = from_config(text_config("qwen3_moe"))
    formats = dict.fromkeys(block_linears_in_features(model), "w4g32")
    lw = Layerwise(model)
    _check_serving_sets(lw, formats)  # one format everywhere
    _check_serving_sets(lw, formats | dict.fromkeys([n for n in formats if ".self_attn." in n], "bf16")
                        | {"model.layers.0.self_attn.q_proj": "fp16"})  # both leave the Linear FP: one scheme
    _raises(lambda: _check_serving_sets(lw, formats | {"model.layers.1.mlp.experts.2.down_proj": "w8"}),
            "quant.recipe", "model.layers.1.mlp.experts.0.gate_proj, up_proj, down_proj, ... (12 Linears) are fused "
            "by serving engines and must share one format (got w4g32 x11, w8 x1)")
