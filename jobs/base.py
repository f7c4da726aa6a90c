"""The one interface every job kind implements; the orchestrator drives it the same way for all."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core.tracking import RunHandle


@dataclass
class StageResult:
    """A job run inside another job (a pipeline's stage): its MLflow run ("" with tracking off) and summary."""
    run_id: str
    summary: dict[str, Any]


class Stages(Protocol):
    """Jobs of any kind, run by the orchestrator's one path (orchestrator/stages.py), for a kind that runs other
    kinds (job=pipeline) without importing them."""

    def sections(self, kind: str) -> tuple[str, ...]:
        """The spec sections a job kind reads."""

    def cluster(self, spec: Any) -> AbstractContextManager[Any]:
        """Connected to `spec.cluster` inside (an embedded cluster started once): the stages run in it share it."""

    def run(self, spec: Any) -> StageResult:
        """Run `spec` (a whole job spec; job.kind says which kind) as a job: checked, locked, tracked, run."""


@dataclass
class RunContext:
    run: RunHandle  # the MLflow run of this job
    job_dir: Path  # local working directory of the job (= job_uri for local storage): logs, summaries
    job_uri: str  # <job.storage>/<job.name> (a local path or s3://...): checkpoints and exports, via core.storage
    warm: Any = None  # what the job's warm_up(spec) returned, if it has one (run() reads it)
    stages: Stages | None = None  # jobs run inside this one (the orchestrator sets it)


class Job(Protocol):
    sections: tuple[str, ...]  # spec sections this kind reads (logged as params)
    # a kind may set `needs_cluster = False` (job=inspect): run() then gets no Ray connection.
    # A kind may define `warm_up(spec) -> Any`: work that needs only the composed spec and a cluster (workers that
    # start and load the model). On a cluster it attaches to, the runner connects and calls it first of all (before
    # the MLflow run opens and prepare() runs, which it overlaps; its errors are raised inside the run); with an
    # embedded cluster, right after connecting, which happens only after prepare() passed.
    # Its result reaches run() as ctx.warm; its close(), if it has one, is called when the job ends, done or failed.
    # A kind may define `check(spec)` (static): its config values alone checked (no file, model or cluster), called
    # for `--cfg job` and before the MLflow run opens (orchestrator/checks.py). A kind that runs other jobs through
    # ctx.stages defines `stage_specs(spec)` (static): their specs, each checked the same way first.

    def prepare(self, spec: Any, ctx: RunContext) -> Any:
        """Validate inputs and build what the workers need, before Ray starts (attached to a running cluster, a
        job's warm_up may already be running beside it)."""

    def run(self, spec: Any, ctx: RunContext, prepared: Any) -> dict[str, Any]:
        """Fan out to Ray actors, gather results; returns a summary to print and log."""
