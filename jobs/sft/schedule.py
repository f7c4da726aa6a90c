"""Warmup then cosine / linear / constant decay, as a multiplier of the base lr per optimizer step."""

from __future__ import annotations

import math
from collections.abc import Callable

from core.errors import ConfigError
from jobs.sft.config import OptimConfig

SCHEDULES = ("cosine", "linear", "constant")


def lr_multiplier(optim: OptimConfig, total_steps: int) -> Callable[[int], float]:
    if optim.schedule not in SCHEDULES:
        raise ConfigError("trainer.optim.schedule", f"{optim.schedule!r} is not one of {', '.join(SCHEDULES)}")
    warmup, floor = optim.warmup_steps, optim.min_lr_ratio

    def multiplier(step: int) -> float:  # step: optimizer steps taken so far (0-based)
        if step < warmup:
            return (step + 1) / warmup
        if optim.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup - 1))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if optim.schedule == "cosine" else 1 - progress
        return floor + (1 - floor) * decay

    return multiplier
