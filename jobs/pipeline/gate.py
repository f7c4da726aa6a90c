"""The quality gate: bounds on the evaluate stage's metrics that the export must meet to be the pipeline's result.

A metric is read from the evaluate job's summary by the name it prints (`kl_mean`, `top1_agreement`,
`perplexity_ratio`, `compare_to.perplexity`, an lm-eval task's metric, ...). A failed gate is its own exit code,
3, so a scheduler tells "the model is not good enough" (the export stays, a candidate) from bad input (2) and
crashes (1)."""

from __future__ import annotations

import re
from typing import Any

from core.errors import ConfigError, UserError

CHECK = re.compile(r"\s*([^\s<>=]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*")
NAMED = {  # pipeline.gate field -> (bound kind, metric)
    "max_kl_mean": ("max", "kl_mean"),
    "max_kl_p99": ("max", "kl_p99"),
    "min_top1_agreement": ("min", "top1_agreement"),
    "max_delta_perplexity": ("max", "delta_perplexity"),
    "max_perplexity_ratio": ("max", "perplexity_ratio"),
}


class GateError(UserError):
    """The export missed a bound of pipeline.gate: one line with every bound and its number."""

    exit_code = 3


def bounds(gate: Any) -> list[tuple[str, str, str, float]]:
    """(field, "max" | "min", metric, bound) of every bound set."""
    out = [(f"pipeline.gate.{name}", kind, metric, getattr(gate, name))
           for name, (kind, metric) in NAMED.items() if getattr(gate, name) is not None]
    for i, text in enumerate(gate.checks):
        found = CHECK.fullmatch(text)
        try:
            bound = float(found.group(3)) if found else None
        except ValueError:
            bound = None
        if bound is None:
            raise ConfigError(f"pipeline.gate.checks.{i}", f"{text!r}: write '<metric> <= <number>' or "
                              "'<metric> >= <number>'")
        out.append((f"pipeline.gate.checks.{i}", "max" if found.group(2) == "<=" else "min", found.group(1), bound))
    return out


def check_gate(gate: Any, stages: list[str]) -> None:
    """The bounds parse, and an evaluate stage reports the metrics they read."""
    if bounds(gate) and "evaluate" not in stages:
        raise ConfigError("pipeline.gate", "bounds on metrics need an evaluate stage in pipeline.stages")


def judge(gate: Any, metrics: dict[str, Any]) -> tuple[bool, str]:
    """Whether every bound holds, and one line with each bound's number (`kl_mean 0.012 <= 0.05`)."""
    parts, passed = [], True
    for field, kind, metric, bound in bounds(gate):
        if metric not in metrics:
            have = ", ".join(sorted(metrics)) or "nothing"
            raise ConfigError(field, f"the evaluate stage reported no {metric!r} (it reported: {have}); metrics "
                              "against the FP model need eval.compare_to (set by the pipeline after quantize)")
        value = float(metrics[metric])
        ok = value <= bound if kind == "max" else value >= bound
        passed &= ok
        sign = ("<=" if ok else ">") if kind == "max" else (">=" if ok else "<")
        parts.append(f"{metric} {value:.6g} {sign} {bound:g}" + ("" if ok else f" ({field})"))
    return passed, "; ".join(parts)
