"""job=pipeline: fine-tune, scan sensitivity, quantize and evaluate as one tracked run.

Each stage is a job of its kind run through the orchestrator's own path (ctx.stages: the same check, MLflow run,
lock, prepare, run and publish as on the command line; no job kind is imported here) on the cluster this job
connected once. Its MLflow run is a child of the pipeline's (tag mlflow.parentRunId) and carries the lineage so far
(`lineage.*`: the SFT run and its data, the sensitivity run and recipe, the quantize run and export). A finished
stage is recorded (jobs/pipeline/records.py); a rerun of the same job.name skips recorded stages and resumes the first
unfinished one. The gate (jobs/pipeline/gate.py) decides whether the final export becomes the pipeline's result."""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from typing import Any

from core import interrupt, storage
from core.errors import UserError
from core.timing import lap
from jobs.base import RunContext
from jobs.pipeline import plan, records
from jobs.pipeline.gate import GateError, bounds, check_gate, judge

log = logging.getLogger("jobs.pipeline")


class StageError(UserError):
    """A stage's own one-line error, naming the stage; its exit code is the stage's."""

    def __init__(self, kind: str, err: UserError) -> None:
        super().__init__(f"stage {kind}: {err}")
        self.exit_code = err.exit_code


def _input_lineage(spec: Any, ctx: RunContext) -> dict[str, str]:
    """What the pipeline starts from: its model, and the SFT run it names (job.parent_run) with that run's data."""
    lineage = {"lineage.input_model": spec.model.path or spec.model.name}
    if spec.job.parent_run and "sft" not in spec.pipeline.stages:
        lineage["lineage.sft_run"] = spec.job.parent_run
        if ctx.run.run_id:
            from mlflow.exceptions import MlflowException

            try:
                params = ctx.run.client.get_run(spec.job.parent_run).data.params
                data = [v for k, v in sorted(params.items()) if k.startswith("data.datasets.") and k.endswith(".path")]
                if data:
                    lineage["lineage.data"] = json.dumps(data)
            except MlflowException:
                log.warning("job.parent_run %s: not a run of this tracking store", spec.job.parent_run)
    return lineage


def _stage_lineage(kind: str, stage: Any, run_id: str, root: str) -> dict[str, str]:
    """What a finished stage adds to the lineage of the stages after it."""
    out = {f"lineage.{kind}_run": run_id}
    if kind == "sft":
        out["lineage.data"] = json.dumps([d.path for d in stage.data.datasets])
        out["lineage.fp_model"] = plan.export_uri(root, "sft")
    elif kind == "sensitivity":
        out["lineage.recipe"] = plan.recipe_uri(root)
    elif kind == "quantize" and stage.quant.export:
        out["lineage.export"] = plan.export_uri(root, "quantize")
    return out


class PipelineJob:
    sections = ("pipeline", "model", "data", "trainer", "quant", "calib", "eval", "search")
    needs_cluster = False  # it connects itself, once, before the first stage that runs (ctx.stages.cluster)

    @staticmethod
    def check(spec: Any) -> None:
        plan.check_stages(spec.pipeline.stages)
        check_gate(spec.pipeline.gate, spec.pipeline.stages)

    @staticmethod
    def stage_specs(spec: Any) -> list[Any]:
        """Checked like any job's spec before anything starts (orchestrator/checks.py)."""
        return plan.stage_specs(spec)

    def prepare(self, spec: Any, ctx: RunContext) -> None:
        if ctx.stages is None:
            raise RuntimeError("job=pipeline runs its stages through the orchestrator (RunContext.stages)")
        ctx.run.set_tags({"pipeline.stages": ",".join(spec.pipeline.stages)})

    def run(self, spec: Any, ctx: RunContext, prepared: None) -> dict[str, Any]:
        root, stages = ctx.job_uri, list(spec.pipeline.stages)
        lineage, done, ran = _input_lineage(spec, ctx), {}, False
        # a signal between stages stops the pipeline at the next stage (its records and tags are never cut short);
        # during a stage, it stops the stage as it would stop that job alone (interrupt.at_once)
        with interrupt.safe_points(), ExitStack() as cluster:  # connected before the first stage that runs
            for i, kind in enumerate(stages):
                interrupt.check()
                stage = plan.stage_spec(spec, kind, root)
                settings = records.fingerprint(stage, ctx.stages.sections(kind))
                record = None if ran else records.read_done(root, kind)
                if record is not None:
                    records.check_same_settings(record, settings, kind, root)
                    log.info("pipeline: stage %s finished before (run %s): skipped", kind, record["run_id"] or "-")
                else:
                    for later in [*stages[i + 1:], plan.RECORD]:  # made from this stage's old outputs, if any
                        storage.remove(plan.stage_dir(root, later))
                    if not ran:
                        with interrupt.at_once():
                            cluster.enter_context(ctx.stages.cluster(spec))
                        lap("work")
                    record = self._run_stage(spec, ctx, kind, stage, settings, lineage, done)
                ran |= record.get("ran", False)
                done[kind] = record
                lineage.update(_stage_lineage(kind, stage, record["run_id"], root))
                ctx.run.set_tags({f"pipeline.{kind}": "ran" if record.get("ran") else "skipped",
                                  f"pipeline.{kind}.run_id": record["run_id"]})
            interrupt.check()
            lap("publish")
            return self._publish(spec, ctx, done, lineage)

    def _run_stage(self, spec: Any, ctx: RunContext, kind: str, stage: Any, settings: dict[str, str],
                   lineage: dict[str, str], done: dict[str, dict]) -> dict[str, Any]:
        upstream = [r["run_id"] for r in done.values() if r["run_id"]]
        stage.job.parent_run = upstream[-1] if upstream else spec.job.parent_run
        if ctx.run.run_id:  # the pipeline's store; nested under its run in MLflow's UI
            stage.tracking.uri = ctx.run.uri
            stage.tracking.tags = {**stage.tracking.tags, **lineage, "mlflow.parentRunId": ctx.run.run_id,
                                   "pipeline.run_id": ctx.run.run_id, "pipeline.stage": kind,
                                   "pipeline.job": ctx.job_uri}
        log.info("pipeline: stage %s", kind)
        try:
            with interrupt.at_once():
                result = ctx.stages.run(stage)
        except UserError as err:
            ctx.run.set_tags({"pipeline.failed_stage": kind})
            raise StageError(kind, err) from None
        except Exception:
            ctx.run.set_tags({"pipeline.failed_stage": kind})
            raise
        record = {"kind": kind, "run_id": result.run_id, "summary": result.summary, "fingerprint": settings,
                  "outputs": plan.outputs(kind, stage, ctx.job_uri)}
        report = result.summary.get("report") if kind == "sensitivity" else None
        records.write(ctx.job_uri, kind, record, report)
        return {**record, "ran": True}

    def _publish(self, spec: Any, ctx: RunContext, done: dict[str, dict], lineage: dict[str, str]) -> dict[str, Any]:
        """The gate, then the final export published as the pipeline's result (or kept as a candidate)."""
        export, gate = plan.final_export(spec, ctx.job_uri), spec.pipeline.gate
        metrics = done.get("evaluate", {}).get("summary", {})
        summary: dict[str, Any] = {"stages": ", ".join(f"{k} {'ran' if r.get('ran') else 'skipped'}"
                                                       for k, r in done.items())}
        ctx.run.set_tags(lineage)
        if metrics:
            ctx.run.log_metrics({f"eval.{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=0)
        verdict = "none"
        if bounds(gate):
            passed, line = judge(gate, metrics)
            verdict = "passed" if passed else "failed"
            ctx.run.set_tags({"pipeline.gate": verdict, "pipeline.gate.numbers": line})
            self._tag_stage(ctx, done.get("quantize"), {"pipeline.gate": verdict})
            summary["gate"] = f"{verdict}: {line}"
            if not passed:
                storage.remove(storage.join(ctx.job_uri, plan.RECORD))  # an earlier run's result, judged again
                ctx.run.set_tags({"pipeline.candidate_uri": export or ""})
                raise GateError(f"gate failed: {line}; the export stays a candidate, not published: {export}")
        if export is not None:
            result = {"export": export, "gate": verdict, "metrics": metrics, "lineage": lineage,
                      "stages": {k: r["run_id"] for k, r in done.items()}}
            summary["result"] = records.write_result(ctx.job_uri, result)
            summary["export"] = export
            ctx.run.set_tags({"pipeline.export_uri": export})
        return summary

    @staticmethod
    def _tag_stage(ctx: RunContext, record: dict | None, tags: dict[str, str]) -> None:
        if record and record["run_id"] and ctx.run.run_id:
            for key, value in tags.items():
                ctx.run.client.set_tag(record["run_id"], key, value)
