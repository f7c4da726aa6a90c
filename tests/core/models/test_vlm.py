"""Config-built VLMs and the ImageTextProcessor interface; model=hf for a saved VLM directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import ConfigError
from core.models import MODELS, ModelConfig

RED = (200, 30, 90)


def _source(name: str = "llava_tiny", **overrides):
    cfg = ModelConfig(name=name, overrides=overrides)
    return MODELS.get(name), cfg


def _build(name: str = "llava_tiny", seed: int = 0, **overrides):
    source, cfg = _source(name, **overrides)
    torch.manual_seed(seed)
    return source.build(cfg, source.hf_config(cfg), torch.float32).eval()


def test_llava_tiny_processor_expands_the_placeholder_and_normalises_pixels() -> None:
    source, cfg = _source()
    proc = source.processor(cfg)
    tokenizer = source.tokenizer(cfg)
    enc = proc.encode("a <image> b", [Image.new("RGB", (90, 70), RED)])
    assert proc.image_token == "<image>" and proc.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    expected = tokenizer.encode("a ") + [proc.image_token_id] * 64 + tokenizer.encode(" b")
    assert enc.input_ids.tolist() == expected and enc.input_ids.dtype == np.int32
    assert set(enc.images) == {"pixel_values"} and enc.images["pixel_values"].shape == (1, 3, 64, 64)
    reference = (np.asarray(RED, np.float32) / 255 - 0.5) / 0.5  # a solid image stays solid through resize/crop
    np.testing.assert_allclose(enc.images["pixel_values"][0], np.broadcast_to(reference[:, None, None], (3, 64, 64)),
                               atol=1e-6)
    assert proc.tokens_per_image((20, 500)) == proc.tokens_per_image((64, 64)) == 64  # (64/8)^2, CLS dropped


def test_text_only_segment_and_placeholder_count_mismatch() -> None:
    source, cfg = _source()
    proc = source.processor(cfg)
    enc = proc.encode("<|im_start|>user\nhi")
    assert enc.input_ids.tolist() == source.tokenizer(cfg).encode("<|im_start|>user\nhi") and enc.images == {}
    with pytest.raises(ValueError, match="2 <image> placeholder"):
        proc.encode("<image><image>", [Image.new("RGB", (8, 8))])


def test_text_only_models_have_no_processor() -> None:
    source, cfg = _source("qwen3_tiny")
    assert source.processor(cfg) is None


def test_llava_tiny_trains_end_to_end_on_a_collated_batch() -> None:
    source, cfg = _source()
    proc = source.processor(cfg)
    model = _build()
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    encs = [proc.encode("<image> colour", [Image.new("RGB", (64, 64), c)]) for c in (RED, (0, 0, 255))]
    ids = torch.tensor(np.stack([e.input_ids for e in encs]).astype(np.int64))
    batch = proc.collate([e.images for e in encs])
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    out = model(input_ids=ids, labels=ids, **batch)
    out.loss.backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    # CLIP's post_layernorm only feeds the pooled output, which LLaVA does not use
    assert no_grad == {"model.vision_tower.post_layernorm.weight", "model.vision_tower.post_layernorm.bias"}


def test_overrides_reach_sub_configs_and_unknown_fields_fail() -> None:
    source, cfg = _source(text_config={"num_hidden_layers": 2}, vision_config={"num_hidden_layers": 1})
    config = source.hf_config(cfg)
    assert config.text_config.num_hidden_layers == 2 and config.vision_config.num_hidden_layers == 1
    with pytest.raises(ConfigError, match="model.overrides: unknown vision_config field"):
        source.validate(ModelConfig(name="llava_tiny", overrides={"vision_config": {"nope": 1}}))


def test_llava_next_small_anyres_tokens_match_transformers_and_the_model() -> None:
    source, cfg = _source("llava_next_small")
    proc = source.processor(cfg)
    for size in [(300, 500), (200, 200), (336, 1008)]:
        (reference,) = proc.hf._get_num_multimodal_tokens(image_sizes=[size]).num_image_tokens
        assert proc.tokens_per_image(size) == reference, size
    encs = [proc.encode("<image>", [Image.new("RGB", (w, h), RED)]) for w, h in [(200, 200), (1000, 300)]]
    batch = proc.collate([e.images for e in encs])  # 3 and 4 tiles (base + grid): zero-padded to 4
    assert batch["pixel_values"].shape == (2, 4, 3, 336, 336)
    assert batch["image_sizes"].tolist() == [[200, 200], [300, 1000]] and not batch["pixel_values"][0, 3:].any()
    model = _build("llava_next_small")
    with torch.no_grad():  # the model consumes exactly the features the processor made room for
        logits = model(input_ids=torch.tensor(encs[0].input_ids[None].astype(np.int64)),
                       pixel_values=batch["pixel_values"][:1], image_sizes=batch["image_sizes"][:1]).logits
    assert logits.shape == (1, proc.tokens_per_image((200, 200)), 260)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source, cfg = _source()
    out = tmp_path_factory.mktemp("llava") / "llava_tiny"
    _build(seed=3).save_pretrained(out)
    source.processor(cfg).save_pretrained(str(out))  # processor config + tokenizer + chat template
    return out


def test_model_hf_loads_a_vlm_directory_with_its_processor(llava_dir: Path) -> None:
    hf = MODELS.get("hf")
    cfg = ModelConfig(name="hf", path=str(llava_dir))
    hf.validate(cfg)
    loaded = hf.build(cfg, hf.hf_config(cfg), torch.float32).eval()
    original = _build(seed=3)
    assert type(loaded).__name__ == "LlavaForConditionalGeneration"
    proc, ref_proc = hf.processor(cfg), _source()[0].processor(_source()[1])
    image = Image.new("RGB", (100, 80), RED)
    enc, ref = proc.encode("see <image> now", [image]), ref_proc.encode("see <image> now", [image])
    assert enc.input_ids.tolist() == ref.input_ids.tolist() and proc.image_token_id == ref_proc.image_token_id
    np.testing.assert_array_equal(enc.images["pixel_values"], ref.images["pixel_values"])
    ids = torch.tensor(enc.input_ids[None].astype(np.int64))
    pixels = torch.from_numpy(enc.images["pixel_values"])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, pixel_values=pixels).logits,
                           original(input_ids=ids, pixel_values=pixels).logits)
    assert hf.tokenizer(cfg).get_vocab() == _source()[0].tokenizer(_source()[1]).get_vocab()


def test_model_hf_text_dir_has_no_processor_and_vlm_dir_without_one_fails(tmp_path: Path) -> None:
    text_dir, bare_vlm = tmp_path / "text", tmp_path / "bare"
    _build("qwen3_tiny").save_pretrained(text_dir)
    _source("qwen3_tiny")[0].tokenizer(ModelConfig(name="qwen3_tiny")).save_pretrained(text_dir)
    assert MODELS.get("hf").processor(ModelConfig(name="hf", path=str(text_dir))) is None
    _build().save_pretrained(bare_vlm)
    _source()[0].tokenizer(ModelConfig(name="llava_tiny")).save_pretrained(bare_vlm)  # no processor config
    with pytest.raises(ConfigError, match="model.path: .*a vision-language model without an image processor"):
        MODELS.get("hf").processor(ModelConfig(name="hf", path=str(bare_vlm)))


def test_llava15_7b_shape_matches_the_published_model() -> None:
    """The benchmark model (benchmarks/vlm.py) on the meta device: llava-hf/llava-1.5-7b-hf has 7,063,427,072
    parameters with its 32064-row vocabulary; ours has 32000 rows (2 x 64 x 4096 fewer) and 576 tokens per image."""
    source, cfg = _source("llava15_7b")
    with torch.device("meta"):
        model = source.build(cfg, source.hf_config(cfg), torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 7_063_427_072 - 2 * 64 * 4096
    proc = source.processor(cfg)
    assert proc.tokens_per_image((336, 336)) == proc.tokens_per_image((64, 64)) == 576  # (336/14)^2
    enc = proc.encode("<image>", [Image.new("RGB", (64, 64), RED)])
    assert enc.images["pixel_values"].shape == (1, 3, 336, 336) and len(enc.input_ids) == 576
