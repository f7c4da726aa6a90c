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
