"""The five steps every job kind goes through: (compose done) track, prepare, place, run, publish."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from core import console, storage
from core.cluster import attaches, connect, ray_job_submission_id
from core.redact import Redactor
from core.timing import STOPWATCH, lap
from core.tracking import RunHandle, flatten, follow_previous, start_run
from jobs.base import RunContext
from jobs.registry import JOBS
from orchestrator.checks import check_spec
from orchestrator.failures import as_user_error, describe
from orchestrator.stages import StageRunner

log = logging.getLogger("orchestrator")
REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_RECORD = "run.json"  # <job dir>/run.json: the MLflow run id of the job's latest run


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _tags(spec: Any, job_name: str) -> dict[str, str]:
    tags = {"job.kind": spec.job.kind, "job.name": job_name, "model": spec.model.name, "git.commit": git_commit()}
    if spec.model.path:
        tags["model.path"] = spec.model.path
    if submission := ray_job_submission_id():
        tags["ray.job_id"] = submission
    if spec.job.parent_run:
        tags["parent_run"] = spec.job.parent_run
    return tags


@dataclass
class _Early:
    """A warm-up started before the MLflow run exists: its result, or the error to raise inside the run."""
    warm: Any = None
    error: Exception | None = None
    taken: bool = False  # the run took the result (and closes it); else _early_warm_up does

    def take(self) -> Any:
        self.taken = True
        if self.error is not None:
            raise self.error
        return self.warm


@contextmanager
def _early_warm_up(job: Any, spec: Any) -> Iterator[_Early | None]:
    """On a cluster the job attaches to (connecting starts nothing), connect and call the job's warm_up() first of
    all: its workers start and load the model while the driver opens the MLflow run and runs prepare(). Errors are
    kept for the run to raise (so it is marked FAILED); the run closes the result (before it ends), or this does if
    the run never took it. None when the job has no warm-up or starts a cluster."""
    warm_up = getattr(job, "warm_up", None) if getattr(job, "needs_cluster", True) else None
    if warm_up is None or not attaches(spec.cluster):
        yield None
        return
    with ExitStack() as stack:
        early = _Early()
        try:
            lap("ray")
            stack.enter_context(connect(spec.cluster))
            lap("workers")
            early.warm = warm_up(spec)
        except Exception as err:  # noqa: BLE001  raised by the run (take())
            early.error = err
        try:
            yield early
        finally:
            if not early.taken:  # the MLflow run failed to open
                _close(early.warm)


def _prepare_and_run(job: Any, spec: Any, ctx: RunContext, early: _Early | None) -> dict[str, Any]:
    """prepare() then run() on the cluster. A warm-up started early (attached) overlaps prepare(); otherwise the
    job's warm_up() runs right after connecting, after prepare(): an embedded cluster starts only for good input.
    Either way its result is closed here, inside the MLflow run. Phases (core.timing): run() begins in "workers"
    (on a cluster; else "work") and the job laps "load", "work" and "publish" itself as it gets there."""
    lap("prepare")
    if early is not None:
        with _closing(early.take()) as ctx.warm:
            prepared = job.prepare(spec, ctx)
            lap("workers")  # waiting for the early workers, until the job says they are loaded
            summary = job.run(spec, ctx, prepared)
            lap("end")
            return summary
    needs_cluster = getattr(job, "needs_cluster", True)
    warm_up = getattr(job, "warm_up", None) if needs_cluster else None
    prepared = job.prepare(spec, ctx)
    lap("ray" if needs_cluster else "work")
    with connect(spec.cluster) if needs_cluster else nullcontext():
        lap("workers" if needs_cluster else "work")
        with _closing(warm_up(spec)) if warm_up is not None else nullcontext() as ctx.warm:
            summary = job.run(spec, ctx, prepared)
            lap("end")  # closing the workers, shutting an embedded cluster down, ending the MLflow run
    return summary


@contextmanager
def _closing(warm: Any) -> Iterator[Any]:
    """A warm-up's result, closed when the job ends, done or failed."""
    try:
        yield warm
    finally:
        _close(warm)


def _close(warm: Any) -> None:
    if hasattr(warm, "close"):  # e.g. workers: ended, their GPUs free at once
        warm.close()


def run_job(spec: Any, cfg: DictConfig, redactor: Redactor) -> dict[str, Any]:
    check_spec(spec)  # every value, before anything starts or opens (the same check as --cfg job)
    job = JOBS.get(spec.job.kind)()
    with _early_warm_up(job, spec) as early:
        summary = _tracked(job, spec, cfg, redactor, early)
    log.info("%s", STOPWATCH.line())
    return summary


def _holder() -> str:
    return f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"


def _tracked(job: Any, spec: Any, cfg: DictConfig, redactor: Redactor, early: _Early | None) -> dict[str, Any]:
    """The job inside its MLflow run, holding its job directory's lock (one run of a job at a time)."""
    storage_root = storage.absolute(spec.job.storage)
    job_name = spec.job.name or f"{spec.job.kind}-{spec.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    job_uri = storage.join(storage_root, job_name)
    job_log = storage.scratch_dir(job_uri) / "logs" / "job.log"  # everything, Ray's start-up lines included
    with storage.lock(job_uri, _holder()), console.job_log(job_log) as log_file:
        lap("mlflow")
        run_record = storage.join(job_uri, RUN_RECORD)
        previous = json.loads(storage.read_text(run_record) or "{}").get("run_id")
        run = start_run(spec.tracking, storage.scratch_dir(storage_root), job_name, _tags(spec, job_name))
        log_file.upload_to(run)  # logs/job.log in the run when the job ends, done or failed
        if run.run_id:
            print(f"MLflow run id: {run.run_id}  (tracking: {run.uri})", flush=True)
            follow_previous(run, previous)
            storage.write_text(run_record, json.dumps({"run_id": run.run_id}))
        return _in_run(job, spec, cfg, redactor, early, run, job_uri)


def _in_run(job: Any, spec: Any, cfg: DictConfig, redactor: Redactor, early: _Early | None, run: RunHandle,
            job_uri: str) -> dict[str, Any]:
    """FINISHED, or FAILED/KILLED with the error's first line as a tag."""
    try:
        resolved = OmegaConf.to_container(cfg)
        run.log_params(flatten({k: resolved[k] for k in ("job", *job.sections, "cluster")}))
        run.log_dict(resolved, "spec/resolved.json")
        run.log_text(OmegaConf.to_yaml(redactor.tree(resolved)), "spec/resolved.yaml")
        ctx = RunContext(run=run, job_dir=storage.scratch_dir(job_uri), job_uri=job_uri, stages=StageRunner(redactor))
        summary = _prepare_and_run(job, spec, ctx, early)
    except BaseException as err:
        user_error = as_user_error(err)
        if isinstance(err, KeyboardInterrupt):
            message = str(err) or "interrupted"  # core.interrupt names the signal
        else:
            message = str(user_error).splitlines()[0][:500] if user_error is not None else describe(err)
        run.set_tags({"error": message})
        run.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        if user_error is not None and user_error is not err:
            raise user_error from None
        raise
    run.log_metrics({f"time_{phase}_seconds": sec for phase, sec in STOPWATCH.so_far().items() if sec}, step=0)
    run.end("FINISHED")
    console.result(summary, run.run_id)  # key: value lines and the status (log.format=json: one result event)
    return summary
