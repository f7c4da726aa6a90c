"""calib=image_caption rows (core/data/calib_mm.py): vision = exactly the expanded image tokens, caption labels,
right padding, interleaved text windows, determinism by seed, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from core.data.calib_mm import PAD, TEXT, VISION, calibration_rows
from core.data.tokenize import IGNORE
from core.errors import ConfigError, DataError
from core.models import MODELS, ModelConfig
from tests.conftest import REPO

SHAPES = REPO / "data" / "shapes" / "train.jsonl"


def calib(**fields) -> SimpleNamespace:
    base = dict(path=str(SHAPES), format="mm_chat_jsonl", media_root=None, num_samples=6, seq_len=512, seed=0,
                text_ratio=0.0, text_path=str(REPO / "data" / "text" / "train.txt"), text_field="text")
    return SimpleNamespace(**{**base, **fields})


@pytest.fixture(scope="module")
def llava():
    cfg = ModelConfig(name="llava_tiny")
    source = MODELS.get("llava_tiny")
    return source.tokenizer(cfg), source.processor(cfg)


def test_vision_mask_is_the_image_tokens_and_labels_the_caption(llava) -> None:
    tok, proc = llava
    rows = calibration_rows(calib(), tok, proc)
    per_image = proc.tokens_per_image((64, 64))
    assert rows.ids.shape[0] == 6 and rows.ids.dtype == np.int64
    captions = {json.loads(line)["messages"][-1]["content"] for line in SHAPES.read_text().splitlines()}
    for r in range(len(rows)):
        real = rows.modality[r] != PAD
        length = int(real.sum())
        assert real[:length].all() and not real[length:].any()  # right padding only
        vision = rows.modality[r] == VISION
        assert np.array_equal(vision, rows.ids[r] == proc.image_token_id)
        assert vision.sum() == per_image * len(rows.images[r]) == per_image
        assert rows.images[r][0]["pixel_values"].shape == (1, 3, 64, 64)
        labelled = rows.labels[r] != IGNORE
        assert not (labelled & vision).any() and not (labelled & ~real).any()
        caption = tok.decode(rows.labels[r][labelled]).replace("<|im_end|>", "").strip()
        assert caption in captions
    assert rows.counts() == {"vision": 6 * per_image, "text": int((rows.modality == TEXT).sum())}
    assert [len(b) for b in rows.batches(4)] == [4, 2]
    assert rows.batches(4)[1].image_inputs()["pixel_values"].shape == (2, 3, 64, 64)


def test_seeded_and_interleaved_with_text(llava) -> None:
    tok, proc = llava
    a, b, c = (calibration_rows(calib(seed=s, text_ratio=0.5), tok, proc) for s in (0, 0, 1))
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.modality, b.modality)
    assert not np.array_equal(a.ids, c.ids)
    text = [r for r in range(len(a)) if not a.images[r]]
    assert len(a) == 9 and len(text) == 3 and text != [6, 7, 8]  # interleaved, not appended
    for r in text:
        assert (a.modality[r] == TEXT).all() and np.array_equal(a.labels[r], a.ids[r])


def test_bad_inputs_are_one_line(llava, tmp_path: Path) -> None:
    tok, proc = llava
    with pytest.raises(ConfigError, match=r"calib.num_samples: need 1000 image\+caption chats, .* has only 480$"):
        calibration_rows(calib(num_samples=1000), tok, proc)
    data = tmp_path / "mm.jsonl"
    lines = SHAPES.read_text().splitlines()[:3]
    data.write_text("\n".join(lines) + "\n")
    shutil.copytree(SHAPES.parent / "train", tmp_path / "train")
    (tmp_path / "train" / "0001.png").unlink()
    with pytest.raises(DataError, match=r"mm.jsonl:2: image .*train/0001.png: no such file$"):
        calibration_rows(calib(path=str(data), num_samples=1), tok, proc)
    with pytest.raises(ConfigError, match=r"calib.seq_len: .*train.jsonl:\d+: \d+ tokens \(images expanded\) > "):
        calibration_rows(calib(seq_len=32), tok, proc)
    with pytest.raises(ConfigError, match="calib.format: mm_chat_jsonl calibration needs a vision-language model"):
        calibration_rows(calib(), tok, None)
    with pytest.raises(ConfigError, match=r"calib.format: unknown calibration format 'pdf' \(known: "):
        calibration_rows(calib(format="pdf"), tok, proc)
    with pytest.raises(ConfigError, match="calib.text_ratio: must be >= 0"):
        calibration_rows(calib(text_ratio=-1), tok, proc)
