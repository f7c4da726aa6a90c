"""`python -m orchestrator -m key=a,b ...`: a sweep. Every job is planned and checked first (orchestrator/
sweep_plan.py), then one Ray cluster serves them all (the attached one, or an embedded one this process starts once),
each job a `python -m orchestrator` of its own attached to it (its own error boundary, lock, job log and MLflow run,
tagged as a child of the sweep's parent run), started as soon as its workers fit beside the running ones (at most
hydra.sweeper.max_batch_size at a time, if set). The end: a summary table (console, the parent run's artifacts).

Jobs are processes, not threads: each job kind's driver keeps process-wide state (signal handlers, its stopwatch,
the environment it sets for Ray Train, DeepSpeed's), and a failing job must not take the others down."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from core import console, interrupt, storage
from core.console import joblog
from core.redact import Redactor, redact_std_streams
from core.tracking import RunHandle, start_run
from orchestrator.compose import App
from orchestrator.sweep_plan import Demand, Plan, PlannedJob, check_placeable, demand, needs_cluster, plan
from orchestrator.sweep_table import Row, records, table

log = logging.getLogger("orchestrator.sweep")
POLL_SECONDS = 0.2
STOP_WAIT_SECONDS = 60  # after a second signal, for the jobs to end before the sweep (and its cluster) does


class Child:
    """One job of the sweep, running: its process (log.format=json: events the sweep reads) and its table row."""

    def __init__(self, job: PlannedJob, command: list[str], env: dict[str, str], sweep: Sweep) -> None:
        self.job, self.sweep, self.row = job, sweep, Row(job.index, job.name, job.swept, status="RUNNING")
        self.demand, self.progress, self.started = job.demand, "", time.time()
        # its own session: a terminal's Ctrl-C reaches the sweep, which passes it on once (twice: stop at once)
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True, bufsize=1)
        self.readers = [threading.Thread(target=self._read, args=(stream, is_err), daemon=True)
                        for stream, is_err in ((self.proc.stdout, False), (self.proc.stderr, True))]
        for reader in self.readers:
            reader.start()

    def _read(self, stream: Any, is_err: bool) -> None:
        for line in stream:
            self.sweep.on_line(self, line.rstrip("\n"), is_err)

    def finish(self) -> None:
        for reader in self.readers:
            reader.join(timeout=30)
        self.row.seconds = round(time.time() - self.started, 1)
        if self.row.status == "RUNNING":  # no result event: it failed (or a signal ended it)
            self.row.status = "KILLED" if self.proc.returncode in (130, 143) else "FAILED"


class Sweep:
    def __init__(self, the_plan: Plan, app: App, parent: RunHandle) -> None:
        self.plan, self.app, self.parent = the_plan, app, parent
        self.rows = [Row(job.index, job.name, job.swept) for job in the_plan.jobs]
        self.running: list[Child] = []
        self.bar: Any = None
        self.exit_codes: list[int] = []

    def command(self, job: PlannedJob, address: str | None) -> list[str]:
        flags = [f"--{name}={value}" for name, value in (("config-path", self.app.config_path),
                 ("config-name", self.app.config_name), ("config-dir", self.app.config_dir)) if value]
        cluster = [f"cluster.address={address}"] if address else []  # the embedded cluster this process holds
        return [sys.executable, "-m", "orchestrator", *flags, *job.overrides, *cluster, "log.format=json"]

    def run(self, address: str | None, capacity: Demand | None) -> None:
        """Start each job once its workers fit beside the running ones; wait for all. A signal: passed on to the
        running jobs (they stop at their next safe point), no new job starts."""
        from tqdm.auto import tqdm

        has_gpu = bool(capacity and capacity.gpus)
        for job in self.plan.jobs:
            job.demand = demand(job.spec, has_gpu)
            if capacity is not None:
                check_placeable(job)
        pending = deque(self.plan.jobs)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        settings = console.output.settings  # a terminal's bar; a log gets the jobs' start and end lines alone
        self.bar = tqdm(total=len(pending), desc="sweep", unit="job", file=sys.stderr, dynamic_ncols=True,
                        disable=settings.format == "json" or settings.quiet or not sys.stderr.isatty())
        try:
            with interrupt.safe_points(on_request=self._forward):
                while pending or self.running:
                    while pending and interrupt.requested() is None and self._fits(pending[0], capacity):
                        job = pending.popleft()
                        log.info("[%d] %s: started (%s)", job.index, job.name, _values(job) or "no swept value")
                        self.running.append(Child(job, self.command(job, address), env, self))
                    if not self.running:
                        break  # a signal came before the rest could start
                    time.sleep(POLL_SECONDS)
                    for child in [c for c in self.running if c.proc.poll() is not None]:
                        self._finished(child)
        except KeyboardInterrupt as err:  # a second signal: the jobs stop at once too, before their cluster goes
            self._forward(getattr(err, "signum", signal.SIGINT))
            self._wait_all(STOP_WAIT_SECONDS)
            raise
        finally:
            self.bar.close()

    def _wait_all(self, timeout: float) -> None:
        deadline = time.time() + timeout
        for child in list(self.running):
            try:
                child.proc.wait(max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
            self._finished(child)

    def _fits(self, job: PlannedJob, capacity: Demand | None) -> bool:
        if not self.running:
            return True
        if self.plan.max_concurrent and len(self.running) >= self.plan.max_concurrent:
            return False
        if capacity is None or job.demand.exclusive or any(c.demand.exclusive for c in self.running):
            return capacity is None and not job.demand.exclusive  # no cluster needed at all: no limit but the cap
        cpus = sum(c.demand.cpus for c in self.running) + job.demand.cpus
        gpus = sum(c.demand.gpus for c in self.running) + job.demand.gpus
        return cpus <= capacity.cpus + 1e-9 and gpus <= capacity.gpus + 1e-9

    def _forward(self, signum: int) -> None:
        for child in list(self.running):
            child.proc.send_signal(signum)

    def _finished(self, child: Child) -> None:
        self.running.remove(child)
        child.finish()
        self.rows[child.job.index] = child.row
        self.exit_codes.append(child.proc.returncode)
        row = child.row
        level = logging.INFO if row.status == "FINISHED" else logging.WARNING
        log.log(level, "[%d] %s: %s in %.1fs%s", row.index, row.name, row.status, row.seconds,
                f" (MLflow run {row.run_id})" if row.run_id else "")
        self.bar.update(1)

    def on_line(self, child: Child, line: str, is_err: bool) -> None:
        """A line of a job's output (its reader thread): into the sweep's log; events read; warnings and errors
        shown with the job's index."""
        joblog.write(f"{joblog.stamp()} [{child.job.index}] {line}\n")
        if is_err:
            if line.startswith("error: "):
                child.row.error = line[len("error: "):]
            console.write(f"[{child.job.index}] {line}\n", sys.stderr)
            return
        try:
            event = json.loads(line)
        except ValueError:
            event = {"msg": line}
        kind = event.get("event")
        if kind == "result":
            child.row.summary, child.row.status = event.get("summary", {}), event.get("status", "FINISHED")
        elif kind == "progress":
            child.progress = f"{event.get('what')} {event.get('done')}/{event.get('total')}"
            self.bar.set_postfix_str(" ".join(f"[{c.job.index}] {c.progress}" for c in self.running if c.progress))
        elif str(event.get("msg", "")).startswith("MLflow run id: ") and not child.row.run_id:
            self._adopt(child, str(event["msg"]).split()[3])
        elif event.get("level") in ("WARNING", "ERROR", "CRITICAL"):
            console.write(f"[{child.job.index}] {event.get('level')} {event.get('msg', '')}\n", sys.stderr)

    def _adopt(self, child: Child, run_id: str) -> None:
        """The job's run, nested under the sweep's in MLflow (the tag its UI groups runs by)."""
        child.row.run_id = run_id
        if self.parent.run_id:
            RunHandle(self.parent.uri, run_id).set_tags({"mlflow.parentRunId": self.parent.run_id,
                                                         "sweep": self.plan.name, "sweep.index": child.job.index})

    def status(self) -> str:
        return "FINISHED" if all(row.status == "FINISHED" for row in self.rows) else "FAILED"


def _values(job: PlannedJob) -> str:
    return " ".join(f"{key}={value}" for key, value in job.swept.items())


@contextmanager
def _cluster(the_plan: Plan) -> Iterator[tuple[str | None, Demand | None]]:
    """The sweep's one cluster: (the address jobs attach to when this process started it, its CPUs and GPUs);
    (None, None) when no job needs Ray. An attached cluster: the jobs attach as this process did."""
    if not needs_cluster(the_plan):
        yield None, None
        return
    import ray

    from core.cluster import connect

    with connect(the_plan.jobs[0].spec.cluster) as mode:
        resources = ray.cluster_resources()
        address = ray.get_runtime_context().gcs_address if mode == "embedded" else None
        log.info("%d jobs on the %s Ray cluster (%g CPU, %g GPU): each starts when its workers fit", len(the_plan.jobs),
                 mode, resources.get("CPU", 0), resources.get("GPU", 0))
        yield address, Demand(resources.get("CPU", 0), resources.get("GPU", 0))


def _parent_run(the_plan: Plan, overrides: list[str]) -> RunHandle:
    first = the_plan.jobs[0].spec
    root = storage.scratch_dir(storage.absolute(first.job.storage))
    tags = {"sweep": the_plan.name, "sweep.jobs": str(len(the_plan.jobs)), "sweep.overrides": " ".join(overrides),
            "job.kind": "sweep"}
    parent = start_run(first.tracking, root, the_plan.name, tags)
    swept: dict[str, list[str]] = {}
    for job in the_plan.jobs:
        for key, value in job.swept.items():
            swept.setdefault(f"sweep.{key}", []).append(value)
    parent.log_params({key: ",".join(dict.fromkeys(values)) for key, values in swept.items()})
    if parent.run_id:
        print(f"MLflow parent run id: {parent.run_id}  (tracking: {parent.uri})", flush=True)
    return parent


def run_sweep(app: App, overrides: list[str], redactor: Redactor) -> int:
    """The sweep's exit code: 0 when every job finished; else the first failed job's (2: its input, 1: other)."""
    the_plan = plan(app, overrides)
    first = the_plan.jobs[0].spec
    redactor = Redactor(first.tracking.redact_keys, first.tracking.redact_values)
    redact_std_streams(redactor)
    console.setup(redactor, first.log)  # the sweep's console follows its first job's log settings
    directory = storage.scratch_dir(storage.absolute(first.job.storage)) / "sweeps" / the_plan.name
    with console.job_log(directory / "logs" / "sweep.log") as log_file:
        parent = _parent_run(the_plan, overrides)
        log_file.upload_to(parent)
        sweep = Sweep(the_plan, app, parent)
        try:
            with _cluster(the_plan) as (address, capacity):
                sweep.run(address, capacity)
            interrupt.check()  # a signal stopped the sweep: its jobs ended at their safe points
        except BaseException as err:
            _end(sweep, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", str(err) or type(err).__name__)
            raise
        status = sweep.status()
        failed = [row for row in sweep.rows if row.status != "FINISHED"]
        _end(sweep, status, f"{len(failed)} of {len(sweep.rows)} jobs failed" if failed else "")
    if not failed:
        return 0
    first_failed = failed[0]
    print(f"error: sweep: {len(failed)} of {len(sweep.rows)} jobs failed; first: [{first_failed.index}] "
          f"{first_failed.name}: {first_failed.error or first_failed.status}", file=sys.stderr, flush=True)
    return next((code for code in sweep.exit_codes if code), 1)


def _end(sweep: Sweep, status: str, error: str) -> None:
    """The table (console, the parent run's sweep/summary.txt and .json), then the parent run's status."""
    text = table(sweep.rows)
    parent = sweep.parent
    parent.log_text(text, "sweep/summary.txt")
    parent.log_dict(records(sweep.rows), "sweep/summary.json")
    if error:
        parent.set_tags({"error": error[:500]})
    parent.end(status)
    joblog.write(f"{joblog.stamp()} RESULT sweep {status}\n{text}")
    if console.output.settings.format == "json":
        console.output.event(event="result", status=status, run_id=parent.run_id, summary={"jobs": records(sweep.rows)})
        return
    console.write(text + (f"MLflow parent run id: {parent.run_id}  status: {status}\n" if parent.run_id else
                          f"status: {status}\n"))
