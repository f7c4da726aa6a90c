"""The one tracking layer: MLflow runs opened by the orchestrator and written to by workers.

`RunHandle` is small and picklable (tracking URI + run id), so a Ray worker logs metrics and
artifacts to the same run the driver opened. Everything passes through the redactor.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from core.errors import ConfigError
from core.redact import Redactor

log = logging.getLogger(__name__)
MAX_PARAM_LEN = 6000  # MLflow's limit for a param value
PARAMS_PER_BATCH = 100
LOG_EXPORTS = ("auto", "true", "false")
# auto copies an export into MLflow up to this size (a tiny or ~500M-parameter bf16 model); larger ones would be
# stored twice (job.storage and the artifact store) and uploaded through the tracking server
LOG_EXPORTS_AUTO_BYTES = 2**30
MANIFEST = "manifest.json"


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite under job.storage
    experiment: str = "orchestrator"
    artifact_location: str | None = None  # for a new experiment; None: the server's, else <job.storage>/mlartifacts
    tags: dict[str, str] = field(default_factory=dict)
    redact_keys: list[str] = field(default_factory=list)  # extra regexes for secret key names
    redact_values: list[str] = field(default_factory=list)  # extra regexes for secret values
    # copy exports into MLflow: auto (only up to LOG_EXPORTS_AUTO_BYTES) | true | false; else their URI + checksums
    log_exports: str = "auto"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(tree, list):
        if all(not isinstance(v, (dict, list)) for v in tree):
            return {prefix: json.dumps(tree)}
        out = {}
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}.{i}"))
        return out
    return {prefix: tree}


def _if_tracking(method: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(method)
    def wrapper(self: RunHandle, *args: Any, **kwargs: Any) -> None:
        if self.run_id:  # an empty run id means tracking.enabled=false
            method(self, *args, **kwargs)

    return wrapper


@dataclass
class RunHandle:
    """A live MLflow run, usable from any process that can reach the tracking URI."""

    uri: str
    run_id: str
    key_patterns: tuple[str, ...] = ()
    value_patterns: tuple[str, ...] = ()

    @property
    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    @property
    def redactor(self) -> Redactor:
        return Redactor(self.key_patterns, self.value_patterns)

    @_if_tracking
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        redactor = self.redactor
        items = [Param(k, str(redactor.value(k, v))[:MAX_PARAM_LEN]) for k, v in params.items()]
        for start in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + PARAMS_PER_BATCH])

    @_if_tracking
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and math.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=items)

    @_if_tracking
    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        redactor = self.redactor
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(redactor.value(k, v))) for k, v in tags.items()])

    @_if_tracking
    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, self.redactor.text(text), artifact_file)

    @_if_tracking
    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.log_text(json.dumps(self.redactor.tree(obj), indent=2, default=str), artifact_file)

    @_if_tracking
    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    @_if_tracking
    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    @_if_tracking
    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


def follow_previous(handle: RunHandle, previous_id: str | None) -> None:
    """The earlier run of the same job (its id recorded in the job directory): one still RUNNING was left by a
    process that died (this run holds the job's lock), so it is ended KILLED with a note; this run is tagged
    `resumed_from_run` it when it did not finish (the job resumes from its checkpoints)."""
    from mlflow.exceptions import MlflowException

    if not handle.run_id or not previous_id or previous_id == handle.run_id:
        return
    client = handle.client
    try:
        status = client.get_run(previous_id).info.status
    except MlflowException:
        return  # another tracking store: nothing to link
    if status == "RUNNING":
        client.set_tag(previous_id, "error", f"its process stopped without ending it (SIGKILL, node loss); found "
                       f"RUNNING by run {handle.run_id}")
        client.set_terminated(previous_id, "KILLED")
        log.warning("MLflow run %s of this job was left RUNNING by a process that died: marked KILLED", previous_id)
    if status != "FINISHED":
        handle.set_tags({"resumed_from_run": previous_id})


def _default_artifact_location(uri: str, storage_root: Path) -> str | None:
    """A tracking server stores artifacts where it is configured (e.g. --artifacts-destination s3://...);
    a local store keeps them next to it."""
    return None if uri.startswith(("http://", "https://")) else (storage_root / "mlartifacts").as_uri()


# MLflow retries an unreachable server for about 4 minutes by default (7 retries, backoff factor 2), silently.
# Bounded here (the user's own MLFLOW_HTTP_REQUEST_* settings win): 3 retries, waits of 1, 2, 4 s, 20 s each.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
for _key, _value in HTTP_DEFAULTS.items():  # read by MLflow at each request, in the driver and every worker
    os.environ.setdefault(_key, _value)


def probe_server(uri: str, redactor: Redactor, timeout: float = 5.0) -> None:
    """Says at once when a tracking server does not answer (MLflow's bounded retries follow, then its error)."""
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except requests.RequestException as err:
        retries = os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        log.warning("tracking server %s does not answer (%s); retrying %s times (MLFLOW_HTTP_REQUEST_MAX_RETRIES)",
                    redactor.text(uri), type(err).__name__, retries)


def start_run(cfg: TrackingConfig, storage_root: Path, run_name: str, tags: dict[str, str]) -> RunHandle:
    from mlflow.tracking import MlflowClient

    if not cfg.enabled:
        return RunHandle(uri="", run_id="")  # tracking off: every write is a no-op
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{storage_root / 'mlflow.db'}"
    if uri.startswith(("http://", "https://")):
        probe_server(uri, Redactor(cfg.redact_keys, cfg.redact_values))
    if uri.startswith("sqlite:///") or "://" not in uri:
        storage_root.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        location = cfg.artifact_location or _default_artifact_location(uri, storage_root)
        experiment_id = client.create_experiment(cfg.experiment, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    handle = RunHandle(uri, "", tuple(cfg.redact_keys), tuple(cfg.redact_values))
    redactor = handle.redactor
    safe_tags = {k: str(redactor.value(k, v)) for k, v in {**tags, **cfg.tags}.items()}
    run = client.create_run(experiment_id, run_name=run_name, tags=safe_tags)
    handle.run_id = run.info.run_id
    log.info("MLflow run %s (experiment %r, %s)", handle.run_id, cfg.experiment, uri)
    return handle



def check_log_exports(value: Any) -> str:
    """tracking.log_exports, normalised (Hydra turns `true` into a bool); a ConfigError names the field."""
    mode = str(value).lower()
    if mode not in LOG_EXPORTS:
        raise ConfigError("tracking.log_exports", f"must be one of {', '.join(LOG_EXPORTS)} (got {value!r})")
    return mode


def export_manifest(directory: str | Path) -> list[dict[str, Any]]:
    """Every file under `directory`: its relative name, size and sha256, to check a copy of the export against."""
    root, files = Path(directory), []
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(2**24), b""):
                digest.update(block)
        files.append({"name": path.relative_to(root).as_posix(), "bytes": path.stat().st_size,
                      "sha256": digest.hexdigest()})
    return files


def log_export(run: RunHandle, staged: str | Path, final_uri: str, mode: Any = "auto",
               limit: int = LOG_EXPORTS_AUTO_BYTES) -> bool:
    """Record an export (its local staged copy, published at `final_uri`) in the run: tag `export_uri` always; the
    files under `export/` when `mode` (tracking.log_exports) is true, or auto and they total at most `limit`
    bytes; else only `export/manifest.json` (uri, total bytes, each file's name, bytes, sha256), so a large model
    is not stored twice. Whether the files were copied."""
    if not run.run_id:
        return False
    mode, total = check_log_exports(mode), sum(p.stat().st_size for p in Path(staged).rglob("*") if p.is_file())
    copy = mode == "true" or (mode == "auto" and total <= limit)
    run.set_tags({"export_uri": final_uri})
    if copy:
        run.log_artifacts(staged, "export")
        return True
    manifest = {"uri": run.redactor.text(final_uri), "total_bytes": total, "files": export_manifest(staged)}
    with TemporaryDirectory() as tmp:  # written as is: the redactor must not touch a checksum
        (Path(tmp) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        run.log_artifacts(tmp, "export")
    log.info("export of %.2f GiB not copied into MLflow (tracking.log_exports=%s): its URI and %s logged",
             total / 2**30, mode, MANIFEST)
    return False
