"""The generic block path (core/blocks/layerwise.py): every block's call captured from the model's own forward and
replayed block by block gives the model's own hidden states, for the registered families and for a model no family
knows; such a model runs GPTQ/RTN, and an algorithm that needs wiring refuses it in one line."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoConfig

from core.blocks.layerwise import Layerwise, mm_token_types
from core.errors import ConfigError
from core.models.auto import from_config
from jobs.quantize.algorithms import ALGORITHMS
from jobs.quantize.algorithms.base import quantize_block
from kernels.quant import parse_format

VOCAB = 260
TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, bos_token_id=1, eos_token_id=2, pad_token_id=0,
            max_position_embeddings=256)


def text_model(model_type: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    return from_config(AutoConfig.for_model(model_type, **{**TEXT, **extra}), attn_implementation="sdpa").eval()


def replay(lw: Layerwise, ids: torch.Tensor, images: dict | None = None) -> torch.Tensor:
    x, calls = lw.capture(ids, images)
    with torch.no_grad():
        for i in range(len(lw.blocks)):
            x = lw.run_block(i, x, calls)
    return x


def model_hidden(model: torch.nn.Module, lw: Layerwise, ids: torch.Tensor, images: dict | None = None) -> torch.Tensor:
    """The last block's output in the model's own forward (a hook on the last block)."""
    box = {}
    handle = lw.blocks[-1].register_forward_hook(lambda _m, _a, out: box.update(y=out[0] if isinstance(out, tuple)
                                                                                else out))
    with torch.no_grad():
        model(input_ids=ids, **(images or {}), use_cache=False)
    handle.remove()
    return box["y"]


# gemma3_text: sliding and full layers (each block its own mask and rotary); olmo2: no family (generic path)
@pytest.mark.parametrize("model_type,extra", [("llama", {}), ("phi3", {"num_key_value_heads": 4}),
                                              ("gemma3_text", {"sliding_window": 8}), ("olmo2", {})])
def test_replay_equals_the_models_own_forward(model_type: str, extra: dict) -> None:
    model = text_model(model_type, **extra)
    lw = Layerwise(model)
    ids = torch.randint(3, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(replay(lw, ids), model_hidden(model, lw, ids), rtol=0, atol=0)


def test_qwen3_vl_deepstack_features_are_replayed() -> None:
    """Qwen3-VL adds its deepstack visual features to the hidden states after the first blocks, outside them: the
    capture keeps that addition and the replay adds it back (3D rope positions come from the model's own call)."""
    from transformers import Qwen3VLConfig

    config = Qwen3VLConfig(
        text_config=dict(**{**TEXT, "num_hidden_layers": 3}, rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=8,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
                           deepstack_visual_indexes=[0, 1], num_position_embeddings=16),
        image_token_id=259, video_token_id=258, vision_start_token_id=257, vision_end_token_id=256)
    torch.manual_seed(0)
    model = from_config(config, attn_implementation="sdpa").eval()
    lw = Layerwise(model)
    grid = torch.tensor([[1, 4, 4]])  # 16 patches of 8x8, merged 2x2: 4 image tokens
    pixels = torch.randn(16, 3 * 2 * 8 * 8, generator=torch.Generator().manual_seed(2))
    ids = torch.tensor([[5, 6, 257, 259, 259, 259, 259, 256, 7, 8, 9, 10]])
    images = {"pixel_values": pixels, "image_grid_thw": grid}
    x, calls = lw.capture(ids, images)  # the capture derives mm_token_type_ids from the ids, as processors do
    assert sorted(calls.added) == [0, 1]  # the two deepstack layers' features, after blocks 0 and 1
    own = model_hidden(model, lw, ids, {**images, "mm_token_type_ids": mm_token_types(model.config, ids)})
    torch.testing.assert_close(replay(lw, ids, images), own, rtol=1e-6, atol=1e-6)


def test_an_unknown_family_runs_gptq_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    model = text_model("olmo2")
    with caplog.at_level(logging.INFO, logger="core.blocks"):
        lw = Layerwise(model)
    assert lw.family is None and lw.layers == "model.layers"
    assert [r.getMessage() for r in caplog.records] == [
        "model_type 'olmo2' is not a registered family: generic block path on model.layers (3 blocks)"]
    ids = torch.randint(3, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    x, calls = lw.capture(ids)
    block = lw.blocks[0]
    before = block.mlp.down_proj.weight.clone()
    result = quantize_block(ALGORITHMS.get("gptq")(None), block, parse_format("w4g32"),
                            lambda b, h, _k: lw.run_block(0, h, calls, b), [[x]])
    assert set(result.layers) >= {"mlp.down_proj", "self_attn.q_proj"}
    assert not torch.equal(block.mlp.down_proj.weight, before)
    with pytest.raises(ConfigError) as err:
        ALGORITHMS.get("awq")(None).prepare(lw.blocks[1], parse_format("w4g32"))
    assert "awq needs the wiring of block 'Olmo2DecoderLayer'" in str(err.value) and "\n" not in str(err.value)


def test_no_blocks_is_a_one_line_error() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model.config = AutoConfig.for_model("llama", **TEXT)
    model.config.model_type = "mystery"
    with pytest.raises(ConfigError, match="no decoder blocks found in model_type 'mystery'"):
        Layerwise(model)


@pytest.mark.parametrize("name", ["internvl", "mistral3", "qwen3_vl"])
def test_merged_image_text_embeddings_replay(name: str) -> None:
    """A VLM's first block inputs are its merged image+text embeddings (its own vision tower and projector), and the
    replay of its language model's blocks equals its forward (pixels made by hand: these processors need torchvision,
    which this CPU stack lacks; tests/jobs/family_models.py)."""
    from tests.jobs.family_models import IMAGE_TOKEN, vlm_config

    torch.manual_seed(0)
    model = from_config(vlm_config(name), attn_implementation="sdpa").eval()
    lw = Layerwise(model)
    assert lw.family is not None and lw.layers == "model.language_model.layers"
    fp = ["model.visual"] if name == "qwen3_vl" else ["model.vision_tower", "model.multi_modal_projector"]
    assert lw.fp_modules() == fp
    gen = torch.Generator().manual_seed(2)
    images = {"internvl": {"pixel_values": torch.randn(1, 3, 32, 32, generator=gen)},
              "mistral3": {"pixel_values": torch.randn(1, 3, 32, 32, generator=gen),
                           "image_sizes": torch.tensor([[32, 32]])},
              "qwen3_vl": {"pixel_values": torch.randn(16, 3 * 2 * 8 * 8, generator=gen),
                           "image_grid_thw": torch.tensor([[1, 4, 4]])}}[name]
    ids = torch.tensor([[5, 6, *[IMAGE_TOKEN] * 4, 7, 8, 9, 10]])  # 4 image tokens in each family's geometry
    x, _ = lw.capture(ids, images)
    text_only = lw.capture(ids)[0]
    assert not torch.equal(x[0, 2:6], text_only[0, 2:6]) and torch.equal(x[0, :2], text_only[0, :2])
    own = model_hidden(model, lw, ids, {**images, "mm_token_type_ids": mm_token_types(model.config, ids)}
                       if name == "qwen3_vl" else images)
    torch.testing.assert_close(replay(lw, ids, images), own, rtol=1e-6, atol=1e-6)
