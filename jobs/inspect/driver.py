"""job=inspect: the model's tree (as print(model) shows it), every parameter's name and shape, total and
trainable counts and the module groups (core/models/groups.py), printed and logged to MLflow.

The model is built on the meta device from its config: shapes and counts are exact for any size, no
weights are read (model=hf reads config.json only) and no Ray worker is needed, so the job never
starts a cluster. `model.freeze` is applied to that copy, so the trainable counts are the ones SFT
would train (SFT logs the same description from its ZeRO-3 workers: core/models/inspect.py describe).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from core.models import MODELS
from core.models.auto import meta_model
from core.models.freeze import apply_freeze
from core.models.inspect import describe
from jobs.base import RunContext
from jobs.inspect.report import group_table, parameter_table

log = logging.getLogger("jobs.inspect")


@dataclass
class Prepared:
    info: dict[str, Any]
    freeze: str | None  # the freeze report's line


class InspectJob:
    sections = ("model",)
    needs_cluster = False  # meta-device model in this process (see the module docstring)

    def prepare(self, spec: Any, ctx: RunContext) -> Prepared:
        source = MODELS.get(spec.model.name)
        source.validate(spec.model)
        model = meta_model(source, spec.model)
        report = apply_freeze(model, list(spec.model.freeze))
        return Prepared(describe(model), report.line() if report else None)

    def run(self, spec: Any, ctx: RunContext, prepared: Prepared) -> dict[str, Any]:
        info = prepared.info
        params, groups = parameter_table(info), group_table(info)
        print(info["tree"], params, groups, sep="\n\n", flush=True)
        if prepared.freeze:
            print(prepared.freeze, flush=True)
        ctx.run.log_text(info["tree"], "inspect/tree.txt")
        ctx.run.log_text(params, "inspect/parameters.md")
        ctx.run.log_text(groups, "inspect/groups.md")
        ctx.run.log_dict({**{k: v for k, v in info.items() if k != "tree"}, "freeze": prepared.freeze},
                         "inspect/model.json")
        ctx.run.log_params({"model.class": info["class"], "model.total_params": info["total_params"],
                            "model.trainable_params": info["trainable_params"],
                            **{f"model.groups.{g}": c["params"] for g, c in info["groups"].items()}})
        return {"class": info["class"], "total_params": info["total_params"],
                "trainable_params": info["trainable_params"],
                "groups": ", ".join(f"{g}={c['params']}" for g, c in info["groups"].items())}
