"""Build the SFT training rows from `data.datasets`: read, validate, tokenize, mix, pack.

Runs in the orchestrator before Ray starts, so every data error surfaces in seconds with file:line;
the rows then travel to the workers through Ray's object store.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from core import storage
from core.data.config import DataConfig
from core.data.formats import FORMATS
from core.data.mixture import apply_ratio
from core.data.packing import PackedRow, pack, unpacked
from core.data.tokenize import TokenizedSample, tokenize_chat
from core.errors import ConfigError, DataError

log = logging.getLogger(__name__)
TRUNCATION = ("right", "drop", "error")


@dataclass
class SFTData:
    rows: list[PackedRow]
    stats: dict[str, Any] = field(default_factory=dict)


def _fit_length(sample: TokenizedSample, cfg: DataConfig, counts: Counter) -> TokenizedSample | None:
    if len(sample) <= cfg.max_length:
        return sample
    if cfg.truncation == "error":
        raise DataError(sample.source, None, f"sample has {len(sample)} tokens > data.max_length={cfg.max_length}")
    if cfg.truncation == "drop":
        counts["dropped_too_long"] += 1
        return None
    cut = TokenizedSample(sample.input_ids[: cfg.max_length], sample.labels[: cfg.max_length], sample.source)
    if cut.loss_tokens == 0:
        counts["dropped_no_loss_after_truncation"] += 1
        return None
    counts["truncated"] += 1
    return cut


def read_dataset(index: int, cfg: DataConfig, tokenizer: Any, counts: Counter) -> list[TokenizedSample]:
    spec = cfg.datasets[index]
    path = storage.local_path(spec.path, field=f"data.datasets[{index}].path")
    reader = FORMATS.get(spec.format)
    samples = []
    for record in tqdm(reader(path), desc=f"tokenize {path.name}", unit=" samples", leave=False):
        sample = tokenize_chat(record.messages, tokenizer, record.source)
        if sample.loss_tokens == 0:
            raise DataError(record.source, None, "sample has no assistant (loss) token")
        fitted = _fit_length(sample, cfg, counts)
        if fitted is not None:
            samples.append(fitted)
    if not samples:
        raise DataError(str(path), None, "dataset is empty (no usable samples)")
    return samples


def validate_data_config(cfg: DataConfig) -> None:
    if not cfg.datasets:
        raise ConfigError("data.datasets", "at least one dataset is required")
    if cfg.truncation not in TRUNCATION:
        raise ConfigError("data.truncation", f"{cfg.truncation!r} is not one of {', '.join(TRUNCATION)}")
    if cfg.packing and cfg.pack_max_length < cfg.max_length:
        raise ConfigError("data.pack_max_length", f"must be >= data.max_length ({cfg.max_length})")
    for i, spec in enumerate(cfg.datasets):
        if spec.sample_ratio <= 0:
            raise ConfigError(f"data.datasets[{i}].sample_ratio", "must be > 0")
        FORMATS.get(spec.format)


def build_sft_data(cfg: DataConfig, tokenizer: Any) -> SFTData:
    validate_data_config(cfg)
    rng = np.random.default_rng(cfg.seed)
    counts: Counter = Counter()
    mixed: list[TokenizedSample] = []
    for i, spec in enumerate(cfg.datasets):
        samples = read_dataset(i, cfg, tokenizer, counts)
        chosen = apply_ratio(samples, spec.sample_ratio, rng)
        counts[f"samples_{spec.name or f'dataset{i}'}"] = len(chosen)
        mixed.extend(chosen)
    if cfg.shuffle:
        mixed = [mixed[i] for i in rng.permutation(len(mixed))]
    rows = pack(mixed, cfg.pack_max_length) if cfg.packing else unpacked(mixed)
    for reason in ("dropped_too_long", "dropped_no_loss_after_truncation"):
        if counts[reason]:
            log.warning("data: %d samples %s", counts[reason], reason.replace("_", " "))
    stats = dict(counts)
    stats.update(
        samples=len(mixed),
        rows=len(rows),
        tokens=int(sum(len(r) for r in rows)),
        loss_tokens=int(sum(s.loss_tokens for s in mixed)),
    )
    return SFTData(rows=rows, stats=stats)
