"""Read the orchestrator's per-step log lines back into numbers."""

from __future__ import annotations

import re
import statistics

STEP = re.compile(r"step (\d+)/\d+ (.*)")
FIELD = re.compile(r"(\w+)=([-\d.e+]+)(%|GiB|s)?")


def parse_steps(output: str) -> list[dict[str, float]]:
    steps = []
    for line in output.splitlines():
        match = STEP.search(line)
        if match:
            fields = {k: float(v) / (100 if unit == "%" else 1) for k, v, unit in FIELD.findall(match.group(2))}
            steps.append({"step": int(match.group(1)), **fields})
    return steps


def steady(steps: list[dict[str, float]], key: str, skip: int) -> float:
    """Median over the steps after the first `skip` (warm-up, allocator growth)."""
    values = [s[key] for s in steps[skip:] if key in s]
    return statistics.median(values) if values else float("nan")
