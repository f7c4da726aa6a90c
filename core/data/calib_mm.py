"""Calibration rows for layerwise quantization: text windows (core/data/calib.py) or image+caption chats
(`calib=image_caption`, format mm_chat_jsonl), optionally interleaved with text windows.

Every row carries, per token, its modality (PAD / TEXT / VISION: vision = the expanded image placeholder
tokens, text = every other real token) and its caption-loss label (the assistant turns' tokens, IGNORE
elsewhere; a text window's label is its own ids). Image+caption rows are right-padded to the longest picked
chat: under a causal mask padding never reaches a real token, and the algorithms drop it (modality PAD).
MBQ (jobs/quantize/algorithms/mbq.py) weights its reconstruction loss by modality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core import storage
from core.data.calib import TEXT_SOURCES, token_blocks
from core.data.config import DatasetSpec
from core.data.multimodal import read_mm_chat_jsonl, tokenize_record
from core.data.tokenize import IGNORE
from core.errors import ConfigError

PAD, TEXT, VISION = 0, 1, 2
IMAGE_FORMATS = ("mm_chat_jsonl",)


@dataclass
class CalibRows:
    ids: np.ndarray  # int64 [N, T]
    modality: np.ndarray  # int8 [N, T]: PAD, TEXT or VISION
    labels: np.ndarray  # int64 [N, T]: caption-loss targets, IGNORE where none
    images: list[list[dict[str, np.ndarray]]] = field(default_factory=list)  # per row: its images' inputs

    def __post_init__(self) -> None:
        if not self.images:
            self.images = [[] for _ in range(len(self.ids))]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: Any) -> CalibRows:
        rows = list(rows)
        return CalibRows(self.ids[rows], self.modality[rows], self.labels[rows], [self.images[r] for r in rows])

    def batches(self, batch_size: int) -> list[CalibRows]:
        return [self.take(range(i, min(i + batch_size, len(self)))) for i in range(0, len(self), batch_size)]

    def counts(self) -> dict[str, int]:
        return {"text": int((self.modality == TEXT).sum()), "vision": int((self.modality == VISION).sum())}

    def image_inputs(self) -> dict[str, Any]:
        """The rows' image inputs as float32 torch tensors, in token order (the order a VLM fills its image
        tokens across a batch); empty for text rows."""
        from core.models.vlm import ImageTextProcessor

        batch = ImageTextProcessor.collate([image for row in self.images for image in row])
        return {k: v.float() if v.is_floating_point() else v for k, v in batch.items()}


def text_rows(ids: np.ndarray) -> CalibRows:
    ids = np.asarray(ids, np.int64)
    return CalibRows(ids, np.full(ids.shape, TEXT, np.int8), ids.copy())


def image_caption_rows(c: Any, tokenizer: Any, processor: Any) -> CalibRows:
    """`c.num_samples` chats of `c.path` picked by `c.seed`, plus round(num_samples * c.text_ratio) windows
    of `c.text_path` as long as the longest chat; rows shuffled by the seed."""
    if processor is None:
        raise ConfigError("calib.format", f"{c.format} calibration needs a vision-language model (its image "
                          "processor); use calib=text for a text-only model")
    local = storage.local_path(c.path, field="calib.path")
    records = list(read_mm_chat_jsonl(local, DatasetSpec(path=c.path, format=c.format, media_root=c.media_root)))
    if len(records) < c.num_samples:
        raise ConfigError("calib.num_samples", f"need {c.num_samples} image+caption chats, {c.path} has only "
                          f"{len(records)}")
    rng = np.random.default_rng(c.seed)
    picked = sorted(rng.choice(len(records), size=c.num_samples, replace=False).tolist())
    samples = [tokenize_record(records[i], tokenizer, processor, "calib.path") for i in picked]
    for sample in samples:
        if len(sample) > c.seq_len:
            raise ConfigError("calib.seq_len", f"{sample.source}: {len(sample)} tokens (images expanded) > "
                              f"calib.seq_len={c.seq_len}")
    length = max(len(s) for s in samples)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n = len(samples)
    ids = np.full((n, length), pad, np.int64)
    modality = np.full((n, length), PAD, np.int8)
    labels = np.full((n, length), IGNORE, np.int64)
    images = []
    for row, s in enumerate(samples):
        ids[row, : len(s)] = s.input_ids
        labels[row, : len(s)] = s.labels
        modality[row, : len(s)] = TEXT
        for span in s.images:
            modality[row, span.start : span.stop] = VISION
        images.append([span.inputs for span in s.images])
    rows = CalibRows(ids, modality, labels, images)
    n_text = round(c.num_samples * c.text_ratio)
    if n_text:
        windows = token_blocks(c.text_path, "text", tokenizer, n_text, length, c.seed, section="calib")
        text = text_rows(windows)
        rows = CalibRows(np.concatenate([rows.ids, text.ids]), np.concatenate([rows.modality, text.modality]),
                         np.concatenate([rows.labels, text.labels]), rows.images + text.images)
    return rows.take(rng.permutation(len(rows)).tolist())


def model_calibration_rows(c: Any, source: Any, model_cfg: Any) -> CalibRows:
    """`calibration_rows` with the model's tokenizer, and its processor where the format has images."""
    processor = source.processor(model_cfg) if c.format in IMAGE_FORMATS else None
    return calibration_rows(c, source.tokenizer(model_cfg), processor)


def check_calib(c: Any) -> None:
    """The `calib.*` values alone (no file read)."""
    if c.format not in IMAGE_FORMATS and c.format not in TEXT_SOURCES:
        known = ", ".join([*TEXT_SOURCES.names(), *IMAGE_FORMATS])
        raise ConfigError("calib.format", f"unknown calibration format {c.format!r} (known: {known})")
    for name in ("num_samples", "seq_len"):
        if getattr(c, name) < 1:
            raise ConfigError(f"calib.{name}", f"must be >= 1 (got {getattr(c, name)})")
    if c.text_ratio < 0:
        raise ConfigError("calib.text_ratio", f"must be >= 0 (got {c.text_ratio})")


def calibration_rows(c: Any, tokenizer: Any, processor: Any | None) -> CalibRows:
    """The calibration rows `calib.*` asks for: text windows (formats of core.data.calib.TEXT_SOURCES) or
    image+caption chats (mm_chat_jsonl)."""
    check_calib(c)
    if c.format in IMAGE_FORMATS:
        return image_caption_rows(c, tokenizer, processor)
    return text_rows(token_blocks(c.path, c.format, tokenizer, c.num_samples, c.seq_len, c.seed, c.text_field))
