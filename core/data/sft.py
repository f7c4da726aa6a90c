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
from core.data.multimodal import image_cut, tokenize_record, truncate
from core.data.packing import PackedRow, pack, unpacked
from core.data.tokenize import TokenizedSample
from core.errors import ConfigError, DataError

log = logging.getLogger(__name__)
TRUNCATION = ("right", "drop", "error")
DROPPED = ("dropped_too_long", "dropped_cut_through_image", "dropped_no_loss_after_truncation")


@dataclass
class SFTData:
    rows: list[PackedRow]
    stats: dict[str, Any] = field(default_factory=dict)


def _fit_length(sample: TokenizedSample, cfg: DataConfig, counts: Counter) -> TokenizedSample | None:
    """Right truncation never splits an image's tokens: such a sample is dropped (counted) instead."""
    if len(sample) <= cfg.max_length:
        return sample
    through = image_cut(sample, cfg.max_length)
    if cfg.truncation == "error":
        detail = f" (the cut would go through image {through + 1}'s tokens)" if through is not None else ""
        raise DataError(sample.source, None,
                        f"sample has {len(sample)} tokens > data.max_length={cfg.max_length}{detail}")
    if cfg.truncation == "drop":
        counts["dropped_too_long"] += 1
        return None
    if through is not None:
        counts["dropped_cut_through_image"] += 1
        return None
    cut = truncate(sample, cfg.max_length)
    if cut.loss_tokens == 0:
        counts["dropped_no_loss_after_truncation"] += 1
        return None
    counts["truncated"] += 1
    return cut


def read_dataset(index: int, cfg: DataConfig, tokenizer: Any, counts: Counter,
                 processor: Any | None = None) -> list[TokenizedSample]:
    spec = cfg.datasets[index]
    path = storage.local_path(spec.path, field=f"data.datasets[{index}].path")
    reader = FORMATS.get(spec.format)
    samples, before = [], counts.copy()
    for record in tqdm(reader(path, spec), desc=f"tokenize {path.name}", unit=" samples", leave=False):
        sample = tokenize_record(record, tokenizer, processor, f"data.datasets[{index}]")
        if sample.loss_tokens == 0:
            raise DataError(record.source, None, "sample has no assistant (loss) token")
        fitted = _fit_length(sample, cfg, counts)
        if fitted is not None:
            samples.append(fitted)
    if not samples:
        dropped = {reason: counts[reason] - before[reason] for reason in DROPPED if counts[reason] > before[reason]}
        if not dropped:
            raise DataError(str(path), None, "dataset is empty (no samples)")
        why = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in dropped.items())
        raise DataError(str(path), None, f"no usable samples: {why} (data.max_length={cfg.max_length}, "
                        f"data.truncation={cfg.truncation})")
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


def build_sft_data(cfg: DataConfig, tokenizer: Any, processor: Any | None = None) -> SFTData:
    """`processor`: the model's ImageTextProcessor (core/models/vlm.py), needed by datasets with images."""
    validate_data_config(cfg)
    rng = np.random.default_rng(cfg.seed)
    counts: Counter = Counter()
    mixed: list[TokenizedSample] = []
    for i, spec in enumerate(cfg.datasets):
        samples = read_dataset(i, cfg, tokenizer, counts, processor)
        chosen = apply_ratio(samples, spec.sample_ratio, rng)
        counts[f"samples_{spec.name or f'dataset{i}'}"] = len(chosen)
        mixed.extend(chosen)
    if cfg.shuffle:
        mixed = [mixed[i] for i in rng.permutation(len(mixed))]
    rows = pack(mixed, cfg.pack_max_length) if cfg.packing else unpacked(mixed)
    for reason in DROPPED:
        if counts[reason]:
            log.warning("data: %d samples %s", counts[reason], reason.replace("_", " "))
    stats = dict(counts)
    stats.update(
        samples=len(mixed),
        rows=len(rows),
        tokens=int(sum(len(r) for r in rows)),
        loss_tokens=int(sum(s.loss_tokens for s in mixed)),
        images=int(sum(len(s.images) for s in mixed)),
    )
    return SFTData(rows=rows, stats=stats)
