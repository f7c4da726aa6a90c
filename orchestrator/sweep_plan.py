"""A sweep's jobs (-m): every combination of the swept values, Hydra's basic sweeper's way (command-line sweeps
`key=a,b` and a job file's `hydra.sweeper.params`; the command line wins for a key in both), each composed and
checked before any starts; their names, and what each asks of the cluster."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from hydra.types import RunMode

from core.console import check_log
from core.errors import ConfigError
from orchestrator.checks import check_spec
from orchestrator.compose import App, compose, hydra_error, to_spec

# the section whose num_workers / cpus_per_worker / use_gpu (/ gpus_per_worker) size a job kind's workers
WORKERS_SECTION = {"sft": "trainer", "quantize": "quant", "sensitivity": "search", "evaluate": "eval"}
NO_CLUSTER = ("inspect",)  # job kinds that never connect to Ray; any other kind not above runs alone


@dataclass
class Demand:
    """What a job's workers take from the cluster at once; exclusive: unknown, so the job runs alone."""
    cpus: float = 0.0
    gpus: float = 0.0
    exclusive: bool = False


@dataclass
class PlannedJob:
    index: int
    name: str
    overrides: list[str]  # the job's whole command line (its combination, job.name last)
    swept: dict[str, str]  # swept key -> this job's value (the summary table's columns)
    spec: Any
    demand: Demand = field(default_factory=Demand)


@dataclass
class Plan:
    name: str  # the sweep's: its parent MLflow run and <job.storage>/sweeps/<name>/
    jobs: list[PlannedJob]
    max_concurrent: int | None  # hydra.sweeper.max_batch_size (None: as many as the cluster fits)
    tracking_uri: str


def combinations(overrides: list[str], params: dict[str, str]) -> list[list[str]]:
    """One override list per job, in Hydra's order (the first swept key varies slowest)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    arguments = [f"{key}={value}" for key, value in params.items()] + list(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(arguments)
        return BasicSweeper.split_arguments(parsed, None)[0]
    except HydraException as err:
        raise hydra_error(err, arguments) from None


def demand(spec: Any, cluster_has_gpu: bool) -> Demand:
    """The job's workers' CPUs and GPUs (use_gpu=auto resolved as the job will: GPUs when the cluster has them)."""
    kind = spec.job.kind
    if kind in NO_CLUSTER:
        return Demand()
    if kind not in WORKERS_SECTION:
        return Demand(exclusive=True)
    section = getattr(spec, WORKERS_SECTION[kind])
    setting = str(section.use_gpu).lower()
    gpu = setting == "true" or (setting == "auto" and cluster_has_gpu)
    per_gpu = float(getattr(section, "gpus_per_worker", 1.0))
    return Demand(section.num_workers * section.cpus_per_worker, section.num_workers * per_gpu if gpu else 0.0)


def check_placeable(job: PlannedJob) -> None:
    """Each job's workers against the cluster's nodes before any job starts (core.cluster.check_fits): on a cluster
    this sweep started, one that could never be placed fails the sweep with one line naming the field (Ray would
    keep it pending forever); on an attached one, a warning (an autoscaler may add nodes)."""
    from core.cluster import check_fits

    name = WORKERS_SECTION.get(job.spec.job.kind)
    if name is None:
        return
    section = getattr(job.spec, name)
    per_worker_gpus = job.demand.gpus / section.num_workers if section.num_workers else 0.0
    gpu_field = "gpus_per_worker" if hasattr(section, "gpus_per_worker") else "use_gpu"
    check_fits(name, section.num_workers, section.cpus_per_worker, per_worker_gpus, gpu_field=gpu_field)


def needs_cluster(plan: Plan) -> bool:
    return any(job.spec.job.kind not in NO_CLUSTER for job in plan.jobs)


def tracking_uri(spec: Any) -> str:
    """Where the job's MLflow run goes (core.tracking.start_run's rule): one store for the whole sweep."""
    import os

    from core import storage

    if not spec.tracking.enabled:
        return ""
    default = f"sqlite:///{storage.scratch_dir(storage.absolute(spec.job.storage)) / 'mlflow.db'}"
    return spec.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or default


def _names(specs: list[Any], stamp: str) -> tuple[str, list[str]]:
    given = [s.job.name for s in specs]
    if all(given) and len(set(given)) == len(given):  # the sweep itself names each job (job.name=a,b)
        return f"sweep-{stamp}", given
    first = specs[0]
    same_model = len({s.model.name for s in specs}) == 1  # else the model is one of the swept values
    base = given[0] or f"{first.job.kind}-{first.model.name + '-' if same_model else ''}{stamp}"
    return base, [f"{base}-{i}" for i in range(len(specs))]


def plan(app: App, overrides: list[str]) -> Plan:
    """Every job of the sweep composed, named and checked; a bad one fails the sweep before anything starts."""
    base = compose(overrides, app, run_mode=RunMode.MULTIRUN, keep_hydra=True)
    sweeper = base.hydra.sweeper
    params = {str(k): str(v) for k, v in (sweeper.get("params") or {}).items()}
    combos = combinations(overrides, params)
    swept_keys = _swept_keys(overrides, params)
    specs = [to_spec(compose(combo, app)) for combo in combos]
    name, names = _names(specs, time.strftime("%Y%m%d-%H%M%S"))
    jobs = []
    for i, (combo, spec, job_name) in enumerate(zip(combos, specs, names, strict=True)):
        spec.job.name = job_name
        check_spec(spec)
        check_log(spec.log)
        values = dict(o.lstrip("+~").split("=", 1) for o in combo if "=" in o)
        jobs.append(PlannedJob(i, job_name, [*combo, f"job.name={job_name}"],
                               {k: values.get(k, "") for k in swept_keys}, spec))
    uris = {tracking_uri(job.spec) for job in jobs}
    if len(uris) > 1:
        raise ConfigError("tracking.uri", "a sweep's jobs go to one MLflow store (one parent run groups them); "
                          "these differ (job.storage or tracking.uri swept?)")
    if len({repr(job.spec.cluster) for job in jobs}) > 1:
        raise ConfigError("cluster", "a sweep's jobs run on one Ray cluster: do not sweep cluster.*")
    limit = sweeper.get("max_batch_size")
    return Plan(name, jobs, int(limit) if limit else None, uris.pop())


def _swept_keys(overrides: list[str], params: dict[str, str]) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + list(overrides))
    keys = [o.get_key_element() for o in parsed if o.is_sweep_override()]
    return list(dict.fromkeys(key.lstrip("+~") for key in keys))
