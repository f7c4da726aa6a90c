"""The one interface every job kind implements; the orchestrator drives it the same way for all."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core.tracking import RunHandle


@dataclass
class RunContext:
    run: RunHandle  # the MLflow run of this job
    job_dir: Path  # local working directory of the job (= job_uri for local storage): logs, summaries
    job_uri: str  # <job.storage>/<job.name> (a local path or s3://...): checkpoints and exports, via core.storage


class Job(Protocol):
    sections: tuple[str, ...]  # spec sections this kind reads (logged as params)
    # a kind may set `needs_cluster = False` (job=inspect): run() then gets no Ray connection

    def prepare(self, spec: Any, ctx: RunContext) -> Any:
        """Validate inputs and build what the workers need, before Ray starts."""

    def run(self, spec: Any, ctx: RunContext, prepared: Any) -> dict[str, Any]:
        """Fan out to Ray actors, gather results; returns a summary to print and log."""
