"""Calibration/eval token blocks: every text source, seeded windows, one-line error when data is short."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.data.calib import TEXT_SOURCES, token_blocks, token_stream
from core.errors import ConfigError, DataError
from core.models.byte_tokenizer import byte_tokenizer

REPO = Path(__file__).resolve().parents[3]
TRAIN = REPO / "data" / "text" / "train.txt"


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_shipped_corpus_blocks_are_seeded_and_disjoint(tok) -> None:
    a = token_blocks(str(TRAIN), "text", tok, 16, 64, seed=0)
    b = token_blocks(str(TRAIN), "text", tok, 16, 64, seed=0)
    c = token_blocks(str(TRAIN), "text", tok, 16, 64, seed=1)
    assert a.shape == (16, 64) and a.dtype == np.int64
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len({row.tobytes() for row in a}) == 16  # windows never repeat
    stream = token_stream(TRAIN, "text", tok)
    assert any(np.array_equal(a[0], stream[i : i + 64]) for i in range(0, len(stream) - 63, 64))


def test_jsonl_and_chat_sources(tok, tmp_path: Path) -> None:
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"line {i}"}) for i in range(3)) + "\n")
    assert tok.decode(token_stream(jsonl, "jsonl", tok)).startswith("line 0<|im_end|>line 1")
    chat = REPO / "data" / "demo" / "facts.jsonl"
    text = tok.decode(token_stream(chat, "chat_jsonl", tok)[:80])
    assert text.startswith("<|im_start|>systemYou answer in one short sentence.<|im_end|><|im_start|>user")
    assert TEXT_SOURCES.names() == ["chat_jsonl", "jsonl", "text"]


def test_bad_inputs_are_one_line(tok, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config error: calib: need 1000 x 512 = 512000 tokens, .*gives only \d+$"):
        token_blocks(str(TRAIN), "text", tok, 1000, 512, seed=0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: no string field 'text'"):
        token_blocks(str(bad), "jsonl", tok, 1, 1, seed=0)
    with pytest.raises(ConfigError, match="unknown text source format 'pdf'"):
        token_blocks(str(TRAIN), "pdf", tok, 1, 1, seed=0)
    with pytest.raises(ConfigError, match="calib.path: /nope.txt: no such file"):
        token_blocks("/nope.txt", "text", tok, 1, 1, seed=0)
