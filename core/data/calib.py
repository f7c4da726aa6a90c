"""Token blocks for calibration and evaluation: documents from a text source, tokenized, joined with the
tokenizer's EOS, cut into `num_samples` x `seq_len` windows chosen by `seed`.

Text sources have their own registry (a document stream, not chat records for SFT): `text` (a plain
file, one document per non-empty line), `jsonl` (a string field per line), `chat_jsonl` (the SFT chat
format, rendered through the model's chat template).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core import storage
from core.data.formats import read_chat_jsonl, read_jsonl, read_lines
from core.data.tokenize import render_chat
from core.errors import ConfigError, DataError
from core.registry import Registry

TextReader = Any  # (path, tokenizer, text_field) -> Iterator[str]


def read_text(path: Path, tokenizer: Any, text_field: str) -> Iterator[str]:
    for _, line in read_lines(path):
        yield line


def read_text_jsonl(path: Path, tokenizer: Any, text_field: str) -> Iterator[str]:
    for line_no, obj in read_jsonl(path):
        if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
            raise DataError(str(path), line_no, f"no string field {text_field!r}")
        yield obj[text_field]


def read_chat_text(path: Path, tokenizer: Any, text_field: str) -> Iterator[str]:
    for record in read_chat_jsonl(path):
        messages = [{k: v for k, v in m.items() if k != "loss"} for m in record.messages]
        yield render_chat(tokenizer, messages)


TEXT_SOURCES: Registry[TextReader] = Registry("text source format", "calib.format")
TEXT_SOURCES.register("text", read_text)
TEXT_SOURCES.register("jsonl", read_text_jsonl)
TEXT_SOURCES.register("chat_jsonl", read_chat_text)


def token_stream(path: Path, fmt: str, tokenizer: Any, text_field: str = "text") -> np.ndarray:
    """All documents' tokens, each followed by EOS (so windows may span documents, as in pretraining)."""
    reader = TEXT_SOURCES.get(fmt)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for text in reader(path, tokenizer, text_field):
        ids.extend(tokenizer.encode(text, add_special_tokens=False))
        ids.extend(eos)
    return np.asarray(ids, dtype=np.int64)


def token_blocks(
    path: str, fmt: str, tokenizer: Any, num_samples: int, seq_len: int, seed: int,
    text_field: str = "text", section: str = "calib",
) -> np.ndarray:
    """[num_samples, seq_len] int64: non-overlapping windows of the token stream, picked by `seed`."""
    for name, value in (("num_samples", num_samples), ("seq_len", seq_len)):
        if value < 1:
            raise ConfigError(f"{section}.{name}", f"must be >= 1 (got {value})")
    local = storage.local_path(path, field=f"{section}.path")
    stream = token_stream(local, fmt, tokenizer, text_field)
    need = num_samples * seq_len
    if len(stream) < need:
        raise ConfigError(section, f"need {num_samples} x {seq_len} = {need} tokens, {path} gives only {len(stream)}")
    windows = len(stream) // seq_len
    picked = np.random.default_rng(seed).choice(windows, size=num_samples, replace=False)
    return np.stack([stream[i * seq_len : (i + 1) * seq_len] for i in picked])
