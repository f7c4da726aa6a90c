"""A search result as a quantization recipe: Linear full name -> chosen format (fp16/bf16: left FP).

Handle names encode their Linears: "model.layers.0.self_attn.q_proj+k_proj+v_proj" is q/k/v of that block
(shared_input handles), a plain Linear name is itself. `quant.recipe` is the report's directory or
report.json (local or s3://), or the MLflow run id of the sensitivity job (its sensitivity/report.json)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from core import storage
from core.errors import ConfigError

FIELD = "quant.recipe"
REPORT = "report.json"


def handle_name(members: list[str]) -> str:
    head = members[0]
    return "+".join([head, *(m.rsplit(".", 1)[1] for m in members[1:])])


def handle_members(name: str) -> list[str]:
    head, *rest = name.split("+")
    parent = head.rsplit(".", 1)[0]
    return [head, *(f"{parent}.{leaf}" for leaf in rest)]


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
