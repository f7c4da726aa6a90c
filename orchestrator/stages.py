"""Jobs run inside a job (job=pipeline's stages), each through the one path every job takes (orchestrator/runner.py:
check, lock, MLflow run, prepare, run, publish), in this process, on the cluster the outer job connected."""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from typing import Any

from core import storage
from core.redact import Redactor
from core.timing import STOPWATCH, lap
from jobs.base import StageResult
from jobs.registry import JOBS


class StageRunner:
    """RunContext.stages of every job: what a job kind that runs other jobs is given instead of importing them."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def sections(self, kind: str) -> tuple[str, ...]:
        return tuple(JOBS.get(kind).sections)

    def cluster(self, spec: Any) -> AbstractContextManager[Any]:
        from core.cluster import connect

        lap("ray")
        return connect(spec.cluster)

    def run(self, spec: Any) -> StageResult:
        """`spec` (a full job spec, job.kind the stage's) run as a job; its summary and MLflow run id."""
        from omegaconf import OmegaConf

        from orchestrator.runner import RUN_RECORD, run_job

        saved = dict(vars(STOPWATCH))  # the stage's own timing line; its time stays in the outer job's phase
        STOPWATCH.restart(time.time(), "compose")
        try:
            summary = run_job(spec, OmegaConf.structured(spec), self.redactor)
        finally:
            vars(STOPWATCH).update(saved)
        job_uri = storage.join(storage.absolute(spec.job.storage), spec.job.name)
        record = json.loads(storage.read_text(storage.join(job_uri, RUN_RECORD)) or "{}")
        return StageResult(run_id=record.get("run_id", "") if spec.tracking.enabled else "", summary=summary)
