"""Placement: attach to an existing Ray cluster, or start an embedded one on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import interrupt

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
_embedded = False  # set while connect() holds a cluster it started itself


@dataclass
class ClusterConfig:
    address: str | None = None  # None: $RAY_ADDRESS if set, else an embedded local cluster
    num_cpus: int | None = None  # embedded cluster only; None: all cores
    num_gpus: int | None = None  # embedded cluster only; None: all GPUs
    include_dashboard: bool = True  # embedded cluster only; bound to 127.0.0.1 (Ray Train's state API needs it)
    tmp_dir: str | None = None  # embedded cluster only; Ray's session dir (default /tmp/ray)


def _loopback_env() -> dict[str, str]:
    # An embedded cluster lives on one host: keep Ray's node address and gloo on loopback.
    return {"GLOO_SOCKET_IFNAME": "lo", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


# Knobs of the driver's environment that every worker gets too, on an attached cluster as well (whose workers
# otherwise inherit the environment of `ray start`): QUANT_BACKEND=torch, the reference quant ops (kernels.quant).
PASSED_TO_WORKERS = ("QUANT_BACKEND",)
WORKER_SETUP_HOOK = "core.console.output.quiet_libraries"  # imported by name in each worker


def _worker_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    passed = {key: os.environ[key] for key in PASSED_TO_WORKERS if key in os.environ}
    return {"PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT), **passed}


def _runtime_env(env_vars: dict[str, str]) -> dict[str, Any]:
    """Every worker process of the job: these variables, and the driver's quiet library loggers."""
    return {"env_vars": env_vars, "worker_process_setup_hook": WORKER_SETUP_HOOK}


def _embedded_env() -> dict[str, str]:
    """Extra worker environment on the embedded cluster only (an attached cluster's nodes keep their own; the
    image sets the same default). Expandable segments unless the user chose: packed SFT steps on an H200 grew
    the caching allocator's reservation to 137 of 140 GiB at 76 GiB allocated, and steps slowed ~10%."""
    return {**_loopback_env(), "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF",
                                                                        "expandable_segments:True")}


def wants_gpu(setting: str) -> bool:
    """A job's auto | true | false GPU setting, resolved against the connected cluster."""
    import ray

    setting = str(setting).lower()
    return setting == "true" or (setting == "auto" and ray.cluster_resources().get("GPU", 0) >= 1)


def compute_dtype(setting: str, use_gpu: bool) -> str:
    """A job's auto | <torch dtype name> setting: auto is bfloat16 on GPUs (all targeted ones have it) and
    float32 on CPUs (where bf16 math is slow)."""
    return setting if setting != "auto" else ("bfloat16" if use_gpu else "float32")


def ray_job_submission_id() -> str | None:
    """The `ray job submit` id when running as a Ray Jobs entrypoint (Ray passes it in the job config)."""
    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    except json.JSONDecodeError:
        return None
    return (config.get("metadata") or {}).get("job_submission_id")


class _Hosted:
    """The body of every actor remote_actor makes: builds the target (a class, or "module:Class" imported here in
    the worker, never in the driver) and keeps a constructor error for each later call to raise."""

    _target: Any = None  # set on each subclass remote_actor makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import time

        self._init_error: Exception | None = None
        entered = time.time()
        try:
            target = _resolve(self._target)
            imported = time.time()
            self._obj = target(*args, **kwargs)
        except Exception as err:  # noqa: BLE001  raised again by the first call
            self._init_error, imported = err, time.time()
        self._stamps = {"entered_at": entered, "imported_at": imported, "built_at": time.time()}

    def hosted_stamps(self) -> dict[str, float]:
        """Wall-clock times: the actor's process reached its constructor, imported its class, built it."""
        return self._stamps

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._init_error is not None:
            raise self._init_error
        return getattr(self._obj, method)(*args, **kwargs)


def _resolve(target: type | str) -> type:
    if isinstance(target, str):
        import importlib

        module, _, name = target.partition(":")
        return getattr(importlib.import_module(module), name)
    return target


def _public_methods(cls: type) -> list[str]:
    import inspect

    return sorted({name for klass in cls.__mro__[:-1] for name, fn in vars(klass).items()
                   if inspect.isfunction(fn) and not name.startswith("_")})  # plain methods: no static/class


def remote_actor(target: type | str, methods: tuple[str, ...] | None = None, **options: Any) -> Any:
    """An actor class like `ray.remote(**options)(cls)` for `target`: a class, or "module:Class", imported in the
    worker only (a driver creates the actor before it has imported the worker's ML stack). An exception in the
    constructor is raised by each later method call instead: Ray reports a failed constructor as ActorDiedError
    carrying only text, so a UserError there (a model path a worker's node cannot read) would reach the user as a
    traceback instead of its one line; wrong constructor arguments are such an error too. `methods`: the names
    callable on the actor (default: a class's public plain methods; a path needs them listed)."""
    import ray

    if methods is None:
        if isinstance(target, str):
            raise TypeError(f"remote_actor({target!r}): list the actor's methods")
        methods = tuple(_public_methods(target))

    def forward(name: str) -> Callable:
        def call(self: _Hosted, *args: Any, **kwargs: Any) -> Any:
            return self._call(name, *args, **kwargs)
        call.__name__ = name
        return call

    name = target.rpartition(":")[2] if isinstance(target, str) else target.__name__
    body = {"_target": target, **{m: forward(m) for m in methods}}
    return ray.remote(**options)(type(name, (_Hosted,), body))


@dataclass
class ActorGroup:
    """Actors a job's warm_up created; the runner calls close() when the job ends, done or failed."""
    actors: list[Any]

    def close(self) -> None:
        """End every actor: their GPUs are free at once, also on a cluster that outlives this driver."""
        import ray

        for actor in self.actors:
            ray.kill(actor)


def lap_workers_loaded(actors: list[Any]) -> None:
    """After the driver waited for `actors` (made by remote_actor): split the wait so far, by when the slowest had
    imported its class and when it was built, into core.timing's "workers" (process start, imports), "load" (the
    constructor: the model) and "work" (what came after)."""
    import ray

    from core.timing import lap

    stamps = ray.get([actor.hosted_stamps.remote() for actor in actors])
    lap("load", at=max(s["imported_at"] for s in stamps))
    lap("work", at=max(s["built_at"] for s in stamps))


def attaches(cfg: ClusterConfig) -> bool:
    """Whether connect() attaches to a running cluster (so connecting starts nothing)."""
    import ray

    return ray.is_initialized() or bool(cfg.address or os.environ.get("RAY_ADDRESS"))


@contextmanager
def connect(cfg: ClusterConfig) -> Iterator[str]:
    """Yield "attached" or "embedded"; an embedded cluster is shut down on exit."""
    import ray

    if ray.is_initialized():
        yield "attached"
        return
    from core import console

    console.adopt_ray_loggers()  # Ray's start-up lines into the job log, off the console
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("attaching to Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True, runtime_env=_runtime_env(_worker_env()))
        console.route_worker_output()
        interrupt.install()
        try:
            yield "attached"
        finally:
            ray.shutdown()
        return
    # the driver's environment too: the raylet inherits it, and so do the workers of the drivers that attach to this
    # cluster (a sweep's jobs: orchestrator/sweep.py), whose runtime_env carries only _worker_env()
    for key, value in _embedded_env().items():
        os.environ.setdefault(key, value)
    context = ray.init(
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        include_dashboard=cfg.include_dashboard,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        _temp_dir=cfg.tmp_dir,
        runtime_env=_runtime_env({**_embedded_env(), **_worker_env()}),
        log_to_driver=True,
    )
    console.route_worker_output()
    interrupt.install()  # ray.init replaced the SIGTERM handler with its own (an exit with a C++ stack dump)
    resources = ray.cluster_resources()
    log.info("started an embedded Ray cluster: %g CPU, %g GPU%s", resources.get("CPU", 0), resources.get("GPU", 0),
             f"; dashboard http://{context.dashboard_url}" if context.dashboard_url else "")
    global _embedded
    _embedded = True
    try:
        yield "embedded"
    finally:
        _embedded = False
        ray.shutdown()


def check_fits(section: str, workers: int, cpus: float, gpus: float, gpu_field: str = "use_gpu") -> None:
    """Fail fast when `workers` workers of (cpus, gpus) each cannot all be placed at once: Ray would keep them
    pending forever, and a job whose workers wait for each other would hang. The error names the field: the
    per-worker request when no node can host even one, else `<section>.num_workers`. An attached cluster may
    grow (autoscaler), so there it is only a warning."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]

    def slots(res: dict[str, float]) -> float:
        by_cpu = res.get("CPU", 0) // cpus if cpus else float("inf")
        by_gpu = res.get("GPU", 0) // gpus if gpus else float("inf")
        return min(by_cpu, by_gpu)

    if sum(slots(r) for r in nodes) >= workers:
        return
    if any(slots(r) for r in nodes):
        field = f"{section}.num_workers"
    elif gpus and all(r.get("CPU", 0) >= cpus for r in nodes):  # the CPUs are there: the GPUs are not
        field = f"{section}.{gpu_field}"
    else:
        field = f"{section}.cpus_per_worker"
    have = ", ".join(f"{r.get('CPU', 0):g} CPU + {r.get('GPU', 0):g} GPU" for r in nodes) or "no live nodes"
    message = (f"{workers} worker(s) of {cpus:g} CPU + {gpus:g} GPU each do not fit the cluster's nodes ({have}); "
               "Ray would wait for them forever")
    if _embedded:
        from core.errors import ConfigError

        raise ConfigError(field, message)
    log.warning("%s: %s (unless an autoscaler adds nodes)", field, message)
