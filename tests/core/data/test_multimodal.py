"""Multimodal chat data: parsing, image placeholder expansion, labels, truncation, packing, and the packed
loss of image+text rows against each sample alone (a real tiny LLaVA in float64)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.data.config import DataConfig, DatasetSpec
from core.data.formats import FORMATS
from core.data.multimodal import tokenize_record
from core.data.packing import pack, unpacked
from core.data.sft import _fit_length, build_sft_data
from core.data.tokenize import IGNORE
from core.errors import DataError
from core.models import MODELS, ModelConfig
from data.shapes.make_shapes import draw
from jobs.sft.batches import causal_lm_loss, collate, image_filler
from tests.conftest import REPO

TOLERANCE = 1e-6  # float64 model; transformers' loss upcasts logits to float32 only
SMALL = {"text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16},
         "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                           "num_attention_heads": 2}}


@pytest.fixture(scope="module")
def llava():
    cfg = ModelConfig(name="llava_tiny", overrides=SMALL)
    source = MODELS.get("llava_tiny")
    return source, cfg, source.tokenizer(cfg), source.processor(cfg)


def _image(path: Path, shape: str = "circle", colour: str = "red") -> str:
    import random

    path.parent.mkdir(parents=True, exist_ok=True)
    draw(shape, colour, 64, random.Random(str(path))).save(path)
    return path.name


def _chat(*user_parts: dict, answer: str = "A red circle.") -> dict:
    return {"messages": [{"role": "user", "content": list(user_parts)}, {"role": "assistant", "content": answer}]}


def _img(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def _write(path: Path, samples: list) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    return path


def _records(path: Path, media_root: str | None = None) -> list:
    spec = DatasetSpec(path=str(path), format="mm_chat_jsonl", media_root=media_root)
    return list(FORMATS.get("mm_chat_jsonl")(path, spec))


def test_placeholders_expand_to_the_feature_count_in_order(tmp_path: Path, llava) -> None:
    _, _, tokenizer, processor = llava
    a, b, c = (_image(tmp_path / f"{n}.png", s) for n, s in (("a", "circle"), ("b", "square"), ("c", "triangle")))
    two_turns = {"messages": [{"role": "user", "content": [_img(a), _text("and"), _img(b), _text("?")]},
                              {"role": "assistant", "content": "Two."},
                              {"role": "user", "content": [_text("This one?"), _img(c)]},
                              {"role": "assistant", "content": "A triangle."}]}
    (record,) = _records(_write(tmp_path / "d.jsonl", [two_turns]))
    sample = tokenize_record(record, tokenizer, processor, "data.datasets[0]")
    per_image = processor.tokens_per_image((64, 64))
    assert per_image == 64  # llava_tiny: 64x64 px, patch 8, CLS dropped
    image_positions = np.flatnonzero(sample.input_ids == processor.image_token_id)
    assert len(image_positions) == 3 * per_image and len(sample.images) == 3
    for span, name in zip(sample.images, "abc", strict=True):
        assert span.stop - span.start == per_image
        assert (sample.input_ids[span.start : span.stop] == processor.image_token_id).all()
        from PIL import Image

        expected = processor.encode(processor.image_token, [Image.open(tmp_path / f"{name}.png").convert("RGB")])
        np.testing.assert_allclose(span.inputs["pixel_values"], expected.images["pixel_values"], atol=1e-3)
        assert span.inputs["pixel_values"].dtype == np.float16
    assert (sample.labels[image_positions] == IGNORE).all()
    trained = tokenizer.decode(sample.input_ids[sample.labels != IGNORE])
    assert trained == "Two.<|im_end|>A triangle.<|im_end|>"  # assistant turns only, never image tokens


def test_media_root_absolute_and_file_urls(tmp_path: Path, llava) -> None:
    root = tmp_path / "media"
    rel = _image(root / "x.png")
    absolute = str(root / rel)
    path = _write(tmp_path / "d.jsonl", [_chat(_img(rel)), _chat(_img(absolute)), _chat(_img(f"file://{absolute}"))])
    assert [r.images for r in _records(path, media_root=str(root))] == [[absolute]] * 3
    with pytest.raises(DataError, match=rf"{path}:1: image {tmp_path}/x.png: no such file"):
        _records(path)  # default media_root: the JSONL's directory


def test_image_parts_in_a_text_format_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", [_chat(_img("x.png"))])
    with pytest.raises(DataError, match=f"{path}:1: has image parts: use format mm_chat_jsonl"):
        list(FORMATS.get("chat_jsonl")(path, None))


def _long_sample(tmp_path: Path, llava, prefix: str):
    _, _, tokenizer, processor = llava
    name = _image(tmp_path / "x.png")
    chat = _chat(_text(prefix), _img(name), _text("What is it?"))
    chat["messages"] += [{"role": "user", "content": "y" * 40}, {"role": "assistant", "content": "ok"}]
    (record,) = _records(_write(tmp_path / "d.jsonl", [chat]))
    return tokenize_record(record, tokenizer, processor, "data.datasets[0]")


def test_truncation_never_cuts_through_an_image(tmp_path: Path, llava) -> None:
    sample = _long_sample(tmp_path, llava, "x" * 20)
    (span,) = sample.images
    right = DataConfig(max_length=span.start + 10, truncation="right")
    counts: Counter = Counter()
    assert _fit_length(sample, right, counts) is None and counts == {"dropped_cut_through_image": 1}
    with pytest.raises(DataError, match=r"data.max_length=\d+ \(the cut would go through image 1's tokens\)"):
        _fit_length(sample, DataConfig(max_length=span.start + 10, truncation="error"), Counter())
    after = len(sample) - 10
    kept = _fit_length(sample, DataConfig(max_length=after, truncation="right"), counts)
    assert len(kept) == after and len(kept.images) == 1 and kept.loss_tokens > 0  # cut after the image: kept
    assert _fit_length(sample, DataConfig(max_length=after, truncation="drop"), counts) is None
    assert counts["dropped_too_long"] == 1


def test_truncation_before_an_image_drops_its_pixels(tmp_path: Path, llava) -> None:
    _, _, tokenizer, processor = llava
    name = _image(tmp_path / "x.png")
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello " * 5},
                         {"role": "user", "content": [_img(name)]}, {"role": "assistant", "content": "A circle."}]}
    (record,) = _records(_write(tmp_path / "d.jsonl", [chat]))
    sample = tokenize_record(record, tokenizer, processor, "data.datasets[0]")
    cut = _fit_length(sample, DataConfig(max_length=sample.images[0].start - 2), Counter())
    assert cut.images == [] and processor.image_token_id not in cut.input_ids and cut.loss_tokens > 0


def _shapes_config() -> DataConfig:
    return DataConfig(datasets=[DatasetSpec(path=str(REPO / "data/shapes/train.jsonl"), format="mm_chat_jsonl"),
                                DatasetSpec(path=str(REPO / "data/demo/facts.jsonl"))],
                      max_length=256, pack_max_length=512, shuffle=False)


def _mixed_samples(tokenizer, processor) -> list:
    """Image samples and text-only ones interleaved: 2 images, 1 text, 4 images, 1 text."""
    from core.data.sft import read_dataset

    cfg = _shapes_config()
    images, texts = (read_dataset(i, cfg, tokenizer, Counter(), processor)[:6] for i in range(2))
    return images[:2] + texts[:1] + images[2:6] + texts[1:2]


def test_sft_data_mixes_text_and_images_and_packs_them_in_order(llava) -> None:
    _, _, tokenizer, processor = llava
    data = build_sft_data(_shapes_config(), tokenizer, processor)
    assert data.stats["images"] == 480 and data.stats["samples"] == 480 + 300
    for row in data.rows:
        positions = np.flatnonzero(row.input_ids == processor.image_token_id)
        assert len(positions) == 64 * len(row.images)
        spans = [np.arange(s.start, s.stop) for s in row.images]
        assert np.array_equal(positions, np.concatenate([*spans, np.zeros(0, np.int64)]))
        assert (row.labels[positions] == IGNORE).all()


def _reference_loss(model, samples) -> float:
    """Each sample alone, through the ordinary attention_mask path, with its own pixels."""
    total, count = 0.0, 0
    for row in unpacked(samples):
        ids = torch.tensor(row.input_ids, dtype=torch.long)[None]
        pixels = {"pixel_values": torch.tensor(np.concatenate([s.inputs["pixel_values"] for s in row.images]))
                  } if row.images else {}
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **pixels).logits[0, :-1]
        target = torch.tensor(row.labels, dtype=torch.long)[1:]
        total += F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum").item()
        count += int((target != IGNORE).sum())
    return total / count


def test_packed_loss_with_images_equals_unpacked_loss(llava) -> None:
    source, cfg, tokenizer, processor = llava
    torch.manual_seed(0)
    model = source.build(cfg, source.hf_config(cfg), torch.float64).eval()
    samples = _mixed_samples(tokenizer, processor)
    rows = pack(samples, max_len=512)
    assert len(rows) < len(samples) and any(len(r.images) > 1 for r in rows)  # rows really share images
    text_rows = pack([s for s in samples if not s.images], max_len=512)
    with torch.no_grad():
        reference = _reference_loss(model, samples)
        batch = collate(rows, tokenizer.pad_token_id, pad_to=512)
        assert batch.images["pixel_values"].shape == (sum(len(r.images) for r in rows), 3, 64, 64)
        packed = causal_lm_loss(model, batch, batch.targets).item()
        # a text-only micro-batch gets the filler row (one image, no labels): same loss as without it
        filled = collate(text_rows, tokenizer.pad_token_id, filler=image_filler(rows))
        plain = collate(text_rows, tokenizer.pad_token_id)
        assert filled.input_ids.shape[0] == plain.input_ids.shape[0] + 1 and not plain.images
        assert (filled.targets, filled.tokens) == (plain.targets, plain.tokens)
        with_filler = causal_lm_loss(model, filled, filled.targets).item()
        without = causal_lm_loss(model, plain, plain.targets).item()
        batch.images["pixel_values"] = batch.images["pixel_values"].flip(0)  # images in the wrong order
        shuffled = causal_lm_loss(model, batch, batch.targets).item()
    assert abs(packed - reference) < TOLERANCE, (packed, reference)
    assert abs(with_filler - without) < TOLERANCE, (with_filler, without)
    assert abs(shuffled - reference) > 1e-4  # the check can fail: pixels must follow their placeholders


def test_dropped_samples_are_counted_and_warned(tmp_path: Path, llava, caplog: pytest.LogCaptureFixture) -> None:
    _, _, tokenizer, processor = llava
    sample = _long_sample(tmp_path, llava, "x" * 20)
    cut_at = sample.images[0].start + 10
    path = tmp_path / "d.jsonl"
    path.write_text(path.read_text() + json.dumps(_chat(_text("hi"), answer="ok")) + "\n")  # text-only: kept
    cfg = DataConfig(datasets=[DatasetSpec(path=str(path), format="mm_chat_jsonl")], max_length=cut_at,
                     pack_max_length=cut_at)
    with caplog.at_level(logging.WARNING, logger="core.data.sft"):
        data = build_sft_data(cfg, tokenizer, processor)
    assert data.stats["dropped_cut_through_image"] == 1 and data.stats["samples"] == 1 and data.stats["images"] == 0
    assert "data: 1 samples dropped cut through image" in caplog.text
