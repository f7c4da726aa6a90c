"""A search result as a quantization recipe: Linear full name -> chosen format (fp16/bf16: left FP).

Handle names encode their Linears: the deepest first, in full; each further one as its dotted components from
where it parts from the first, which replace as many of the first's last components, plus one more per leading "^".
"model.layers.0.self_attn.q_proj+k_proj+v_proj" is q/k/v of that block; "model.layers.0.mlp.experts.0.gate_proj+
up_proj+down_proj+1.gate_proj+..." the experts of a mixture-of-experts block; "...+^shared_experts.gate_proj" adds
a shallower Linear (model.layers.0.mlp.shared_experts.gate_proj); a plain Linear name is itself.
`quant.recipe` is the report's directory or report.json (local or s3://), or the MLflow run id of the sensitivity
job (its sensitivity/report.json).

Serving engines run some Linears as one GEMM (a family's `serving_fused` sets: core/models/families/) and refuse a
checkpoint that gives them different schemes: `check_serving_sets` refuses such a recipe."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from core import storage
from core.errors import ConfigError
from kernels.quant import parse_target

FIELD = "quant.recipe"
REPORT = "report.json"
LISTED = 8  # an error lists a set's Linears one by one up to this many


def handle_name(members: Sequence[str]) -> str:
    """Distinct members as one name (the module docstring's grammar); the deepest first, the rest in their order."""
    head = max(members, key=lambda m: m.count("."))  # the first of the deepest
    parts = head.split(".")
    return "+".join([head, *(_tail_after(parts, m.split(".")) for m in members if m != head)])


def _tail_after(head: list[str], parts: list[str]) -> str:
    shared = next(i for i, (a, b) in enumerate(zip(head, parts, strict=False)) if a != b)  # distinct, none deeper
    return "^" * (len(head) - len(parts)) + ".".join(parts[shared:])


def handle_members(name: str) -> list[str]:
    head, *rest = name.split("+")
    parts = head.split(".")
    return [head, *(".".join([*parts[:len(parts) - _replaced(tail)], tail.lstrip("^")]) for tail in rest)]


def _replaced(tail: str) -> int:
    """How many of the first member's last components a further member's tail replaces."""
    return len(tail) - len(tail.lstrip("^")) + tail.count(".") + 1


def check_serving_sets(formats: Mapping[str, str], sets: Iterable[Sequence[str]]) -> None:
    """One format per serving-fused set (`formats`: every block Linear's, fp16/bf16 alike: both leave it FP), else
    a ConfigError naming the set's Linears and the formats they got."""
    for members in sets:
        got = [formats[m] for m in members]
        if len({_scheme(fmt) for fmt in got}) > 1:
            counted = ", ".join(f"{fmt} x{got.count(fmt)}" for fmt in dict.fromkeys(got))
            listed = ", ".join(got) if len(got) <= LISTED else counted
            raise ConfigError(FIELD, f"{short_names(members)} are fused by serving engines and must share one format "
                              f"(got {listed})")


def short_names(members: Sequence[str]) -> str:
    """Linears as an error names them: as in their handle name, a large set (a block's experts) by its first few
    and its size, so the error stays one readable line."""
    names = handle_name(members).split("+")
    return ", ".join(names) if len(names) <= LISTED else f"{', '.join(names[:3])}, ... ({len(names)} Linears)"


def _scheme(fmt: str) -> str:
    parsed = parse_target(fmt)
    return "fp16" if parsed is None else parsed.name


def _report_path(ref: str, tracking_uri: str | None) -> Path:
    if re.fullmatch(r"[0-9a-f]{32}", ref):  # an MLflow run id
        import mlflow

        try:
            return Path(mlflow.artifacts.download_artifacts(run_id=ref, artifact_path=f"sensitivity/{REPORT}",
                                                            tracking_uri=tracking_uri))
        except Exception as err:  # MLflow raises several types for a missing run or artifact
            raise ConfigError(FIELD, f"run {ref}: no sensitivity/{REPORT} ({type(err).__name__})") from None
    path = storage.local_path(ref, field=FIELD)
    return path / REPORT if path.is_dir() else path


def load_recipe(ref: str, tracking_uri: str | None = None) -> dict[str, str]:
    """Linear full name -> format string, from a sensitivity report (see module docstring)."""
    path = _report_path(ref, tracking_uri)
    try:
        choices = json.loads(path.read_text())["choices"]
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(FIELD, f"{ref}: not a sensitivity report.json ({type(err).__name__}: {err})") from None
    return {member: fmt for handle, fmt in choices.items() for member in handle_members(handle)}
