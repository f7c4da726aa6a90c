"""What each stage of a pipeline runs: a job of its kind on a copy of the pipeline's spec (its own sections as the
user composed them), with its inputs wired to the outputs of the stages before it.

Every stage is a job named after its kind under the pipeline's directory (`<job.storage>/<job.name>/<kind>/`), so
its outputs have fixed places, known before anything runs:
- sft: `sft/export`, the FP model every later stage starts from (model=hf, model.path=it);
- sensitivity: its report, kept with the stage's record (`sensitivity/result/report`): quantize's quant.recipe;
- quantize: `quantize/export`, the model the evaluate stage scores, eval.compare_to the FP model (unless set);
- evaluate: its metrics (the job's summary), which the gate reads.
Without an sft stage the FP model is the spec's own `model` (e.g. the latest SFT export: orchestrator/latest.py)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from core import storage
from core.errors import ConfigError

ORDER = ("sft", "sensitivity", "quantize", "evaluate")
RECORD = "result"  # <stage dir>/result: the stage's record (result.json + COMPLETE), written by the pipeline
REPORT = "report"  # the sensitivity report's copy inside its record


def check_stages(stages: list[str]) -> None:
    """A non-empty subsequence of ORDER, each kind once."""
    field = "pipeline.stages"
    if not stages:
        raise ConfigError(field, f"empty: name some of {', '.join(ORDER)}")
    unknown = [s for s in stages if s not in ORDER]
    if unknown:
        raise ConfigError(field, f"{unknown[0]!r} is not a pipeline stage (stages: {', '.join(ORDER)})")
    if len(set(stages)) != len(stages):
        raise ConfigError(field, f"each stage at most once (got {list(stages)})")
    if list(stages) != sorted(stages, key=ORDER.index):
        raise ConfigError(field, f"stages run in the order {', '.join(ORDER)} (got {', '.join(stages)})")


def stage_dir(root: str, kind: str) -> str:
    return storage.join(root, kind)


def record_uri(root: str, kind: str) -> str:
    return storage.join(root, kind, RECORD)


def export_uri(root: str, kind: str) -> str:
    return storage.join(root, kind, "export")


def recipe_uri(root: str) -> str:
    return storage.join(record_uri(root, "sensitivity"), REPORT)


def fp_model(spec: Any, root: str) -> Any:
    """The model the stages after SFT start from: SFT's export (its config.json holds the shape: no overrides)."""
    if "sft" not in spec.pipeline.stages:
        return copy.deepcopy(spec.model)
    return dataclasses.replace(spec.model, name="hf", path=export_uri(root, "sft"), overrides={})


def final_export(spec: Any, root: str) -> str | None:
    """The pipeline's result: the quantized export, else the SFT export, else nothing."""
    stages = spec.pipeline.stages
    if "quantize" in stages and spec.quant.export:
        return export_uri(root, "quantize")
    return export_uri(root, "sft") if "sft" in stages else None


def stage_spec(spec: Any, kind: str, root: str) -> Any:
    """The spec of stage `kind`: the pipeline's, as that kind's job, its inputs from the stages before it (tracking,
    tags and job.parent_run are the driver's: they name MLflow runs)."""
    stages, out = spec.pipeline.stages, copy.deepcopy(spec)
    out.job.kind, out.job.name, out.job.storage = kind, kind, root
    fp = fp_model(spec, root)
    if kind in ("sensitivity", "quantize"):
        out.model = fp
    if kind == "quantize" and "sensitivity" in stages:
        out.quant.recipe = recipe_uri(root)
    if kind == "evaluate":
        quantized = "quantize" in stages and spec.quant.export
        out.model = dataclasses.replace(fp, name="hf", path=export_uri(root, "quantize")) if quantized else fp
        if out.eval.compare_to is None and quantized and fp.path:
            out.eval.compare_to = fp.path
    return out


def stage_specs(spec: Any) -> list[Any]:
    """Every stage's spec as `--cfg job` and the pre-run check see it (under a placeholder job directory)."""
    check_stages(spec.pipeline.stages)
    root = storage.join(spec.job.storage, spec.job.name or "pipeline")
    return [stage_spec(spec, kind, root) for kind in spec.pipeline.stages]


def outputs(kind: str, spec: Any, root: str) -> list[str]:
    """The storage directories a finished stage has published (each with its COMPLETE marker)."""
    if kind == "sft" or (kind == "quantize" and spec.quant.export):
        return [export_uri(root, kind)]
    return []
