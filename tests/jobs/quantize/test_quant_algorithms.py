"""Each algorithm on a tiny random Qwen3 block; error orderings on LLM-like inputs with outlier channels."""

from __future__ import annotations

import math

import pytest
import torch

from core.blocks.mappings import find_linears, fold_scales, resolve_mappings
from core.models.families import FAMILIES
from core.quant.act_quant import ActQuantLinear
from kernels.quant import get_op, parse_format
from kernels.quant.reference import dequantize

LINEARS = {f"self_attn.{p}_proj" for p in "qkvo"} | {f"mlp.{p}_proj" for p in ("gate", "up", "down")}


@pytest.mark.parametrize(
    ("algorithm", "fmt"),
    [("rtn", "w4g32"), ("rtn", "w8a8"), ("gptq", "w4g32"), ("gptq", "w3"), ("awq", "w4g32"),
     ("awq", "w3g64"), ("smoothquant", "w8a8"), ("smoothquant", "w4a8g32")],
)
def test_algorithm_quantizes_block_in_place(tiny, algorithm: str, fmt: str) -> None:
    block, result = tiny.quantize(algorithm, fmt)
    qf = parse_format(fmt)
    assert set(result.layers) == LINEARS
    for name, lin in find_linears(block).items():
        layer = result.layers[name]
        assert layer.qweight.dtype == torch.int8
        assert int(layer.qweight.min()) >= qf.qmin and int(layer.qweight.max()) <= qf.qmax
        deq = dequantize(layer.qweight, layer.scale, layer.zero.float(), qf.group_size)
        assert torch.equal(lin.weight.data, deq), f"{name}: block weights must be the dequantized integers"
        assert all(math.isfinite(v) for v in result.metrics[name].values()), result.metrics[name]
        assert isinstance(lin, ActQuantLinear) == (qf.act_bits is not None)
    err = tiny.error(block)
    assert math.isfinite(err) and err < 0.2, f"{algorithm} {fmt}: held-out relative block error {err:.4f}"


@pytest.mark.parametrize("fmt", ["w4g32", "w3g32"])
def test_awq_and_gptq_beat_rtn_on_outlier_inputs(tiny, fmt: str) -> None:
    errors = {name: tiny.error(tiny.quantize(name, fmt)[0]) for name in ("rtn", "gptq", "awq")}
    report = ", ".join(f"{k} {v:.5f}" for k, v in errors.items())
    print(f"\n{fmt} held-out relative block error: {report}")
    assert errors["gptq"] <= errors["rtn"], f"{fmt}: GPTQ worse than RTN ({report})"
    assert errors["awq"] <= errors["rtn"], f"{fmt}: AWQ worse than RTN ({report})"


def test_smoothquant_beats_rtn_at_w8a8(tiny) -> None:
    errors = {name: tiny.error(tiny.quantize(name, "w8a8")[0]) for name in ("rtn", "smoothquant")}
    report = ", ".join(f"{k} {v:.6f}" for k, v in errors.items())
    print(f"\nw8a8 held-out relative block error: {report}")
    assert errors["smoothquant"] <= errors["rtn"], f"SmoothQuant worse than RTN at w8a8 ({report})"


def test_gptq_lowers_calibration_error_of_every_layer(tiny) -> None:
    # GPTQ's objective: output error on the calibration inputs, per Linear
    _, rtn = tiny.quantize("rtn", "w3g32")
    _, gptq = tiny.quantize("gptq", "w3g32")
    for name in LINEARS:
        r, g = rtn.metrics[name]["output_rel_err"], gptq.metrics[name]["output_rel_err"]
        assert g <= r, f"{name}: gptq {g:.5f} > rtn {r:.5f} on calibration inputs"


def test_gptq_lazy_batches_and_identity_hessian() -> None:
    from jobs.quantize.algorithms.gptq import gptq_quantize

    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(16, 128, generator=gen), torch.randn(512, 128, generator=gen, dtype=torch.float64)
    h = 2 * x.T @ x / 512
    fmt = parse_format("w4g32")
    full = gptq_quantize(w, h, fmt, blocksize=128)
    for blocksize in (1, 32, 64):  # lazy batching is an exact reordering of the same updates
        assert torch.equal(gptq_quantize(w, h, fmt, blocksize=blocksize)[0], full[0]), blocksize
    q, scale, zero = gptq_quantize(w, torch.eye(128, dtype=torch.float64), fmt)  # no correlations: RTN
    assert torch.equal(q, get_op("quantize_weight")(w.double(), fmt)[0])
    q, scale, zero = gptq_quantize(w, h, fmt, act_order=True)  # contiguous groups kept
    assert scale.shape == (16, 4)
    assert torch.equal(scale, get_op("compute_qparams")(w.double(), 4, 32, True)[0])


def test_awq_records_choices_and_smoothing(tiny) -> None:
    _, result = tiny.quantize("awq", "w4g32")
    assert set(result.smoothing) == {"input_layernorm", "self_attn.v_proj", "post_attention_layernorm",
                                     "mlp.up_proj"}
    assert all(0 <= a < 1 for a in result.info["alpha"].values())
    # alpha 0 (no scaling) is on the grid, so the chosen loss never exceeds it
    assert all(r <= 1.0 for r in result.info["loss_vs_rtn"].values()), result.info["loss_vs_rtn"]


@pytest.mark.parametrize("with_linear_prev", [False, True])
def test_folding_scales_keeps_the_fp_function(tiny, with_linear_prev: bool) -> None:
    block = tiny.fresh()
    x = tiny.held_out[0]
    before = tiny.run_block(block, x)
    mappings, skipped = resolve_mappings(block, FAMILIES.get("llama"))
    assert not skipped
    gen = torch.Generator().manual_seed(0)
    for m in mappings:
        if m.prev_is_norm or with_linear_prev:
            fold_scales(m, torch.rand(m.linears[0].in_features, generator=gen) * 4 + 0.25)
    after = tiny.run_block(block, x)
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-4), float((after - before).abs().max())


def test_gqa_skips_v_to_o() -> None:
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

    config = Qwen3Config(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, num_hidden_layers=1)
    mappings, skipped = resolve_mappings(Qwen3DecoderLayer(config, 0), FAMILIES.get("llama"))
    assert [m.prev_name for m in mappings] == ["input_layernorm", "post_attention_layernorm", "mlp.up_proj"]
    assert len(skipped) == 1 and skipped[0].startswith("self_attn.v_proj -> self_attn.o_proj")


def test_act_quant_keeps_state_dict_names(tiny) -> None:
    block, _ = tiny.quantize("rtn", "w8a8")
    assert set(block.state_dict()) == set(tiny.block.state_dict())
