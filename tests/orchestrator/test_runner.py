"""The runner's order of a job's steps (orchestrator/runner.py): warm_up comes first of all (before the MLflow run
and prepare) only where connecting starts nothing. A recording job stands in for a job kind (what is tested is the
runner's order, on real Ray clusters and a real MLflow store); the real kinds' warm-ups run in their end-to-end
tests."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.cluster import ClusterConfig
from core.errors import ConfigError
from jobs.base import RunContext
from orchestrator.runner import _prepare_and_run


class Warm:
    """What a warm-up returns (e.g. workers loading the model); close() is the runner's to call at the end, while
    the MLflow run is still open (it records the run's status then, where there is one)."""

    def __init__(self, calls: list, job: Recording) -> None:
        self.calls, self.job = calls, job

    def close(self) -> None:
        self.calls.append(("close", self.job.run_status()))


class Recording:
    sections = ()

    def __init__(self, fail_prepare: bool = False, fail_warm_up: bool = False, store: Path | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail_prepare, self.fail_warm_up = fail_prepare, fail_warm_up
        self.store = store  # the MLflow store run_job opens (warm_up records whether it exists yet)
        self.run_id = ""

    def run_status(self) -> str | None:
        """The status of this job's MLflow run in its store now (None: no run seen)."""
        if not self.run_id:
            return None
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=f"sqlite:///{self.store}").get_run(self.run_id).info.status

    def warm_up(self, spec) -> Warm:
        import ray

        self.calls.append(("warm_up", ray.is_initialized(), *([self.store.exists()] if self.store else [])))
        if self.fail_warm_up:
            raise ConfigError("search.candidates", "unknown format 'w5'")
        return Warm(self.calls, self)

    def prepare(self, spec, ctx: RunContext) -> str:
        import ray

        self.run_id = ctx.run.run_id if ctx.run else ""
        self.calls.append(("prepare", ray.is_initialized(), bool(self.run_id)))
        if self.fail_prepare:
            raise ConfigError("calib.path", "no such file")
        return "prepared"

    def run(self, spec, ctx: RunContext, prepared: str) -> dict:
        self.calls.append(("run", isinstance(ctx.warm, Warm), prepared))  # the warm-up's result reached run()
        return {}


def _spec(cluster: ClusterConfig) -> SimpleNamespace:
    return SimpleNamespace(cluster=cluster)


def _ctx(tmp_path: Path) -> RunContext:
    return RunContext(run=None, job_dir=tmp_path, job_uri=str(tmp_path))


def _run_recording(job: Recording, storage: Path, monkeypatch: pytest.MonkeyPatch, uri: str | None = None) -> None:
    """run_job on `job` registered as a job kind, its MLflow store (sqlite) under `storage` (or at `uri`)."""
    from core.redact import Redactor
    from jobs.registry import JOBS
    from orchestrator.compose import compose, to_spec
    from orchestrator.runner import run_job

    monkeypatch.setitem(JOBS._entries, "recording", lambda: job)
    job.store = storage / "mlflow.db"
    cfg = compose(["job=inspect", "job.kind=recording", f"job.storage={storage}",
                   f"tracking.uri={uri or f'sqlite:///{job.store}'}"])
    run_job(to_spec(cfg), cfg, Redactor())


def _only_run(storage: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run


@pytest.mark.e2e
def test_attached_warm_up_comes_before_the_mlflow_run_and_prepare(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    # a cluster this process is already connected to: connect() attaches (as to cluster.address / RAY_ADDRESS)
    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=f"/tmp/orch-att-{os.getpid()}")
    try:
        job = Recording()
        _run_recording(job, tmp_path / "ok", monkeypatch)
        # warm_up before the MLflow store exists (start_run creates it); prepare inside the run
        assert job.calls == [("warm_up", True, False), ("prepare", True, True), ("run", True, "prepared"),
                             ("close", "RUNNING")]  # the workers ended inside the run
        failing = Recording(fail_prepare=True)
        with pytest.raises(ConfigError, match="calib.path"):
            _run_recording(failing, tmp_path / "bad-prepare", monkeypatch)
        assert failing.calls == [("warm_up", True, False), ("prepare", True, True), ("close", "RUNNING")]
        bad_warm_up = Recording(fail_warm_up=True)
        with pytest.raises(ConfigError, match="search.candidates"):
            _run_recording(bad_warm_up, tmp_path / "bad-warm-up", monkeypatch)
        assert bad_warm_up.calls == [("warm_up", True, False)]  # nothing prepared
        no_run = Recording()
        with pytest.raises(Exception, match="nowhere"):  # noqa: PT011  MLflow's own error type
            _run_recording(no_run, tmp_path / "no-run", monkeypatch, uri="nowhere://tracking")
        assert no_run.calls == [("warm_up", True, False), ("close", None)]  # the run never opened: workers ended
    finally:
        ray.shutdown()
    assert _only_run(tmp_path / "ok").info.status == "FINISHED"
    for name, field in (("bad-prepare", "calib.path"), ("bad-warm-up", "search.candidates")):
        failed = _only_run(tmp_path / name)
        assert failed.info.status == "FAILED" and field in failed.data.tags["error"]  # the error recorded in the run


@pytest.mark.e2e
def test_embedded_cluster_starts_only_after_prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    failing = Recording(fail_prepare=True)
    cluster = ClusterConfig(num_cpus=1, num_gpus=0, include_dashboard=False, tmp_dir=f"/tmp/orch-run-{os.getpid()}")
    with pytest.raises(ConfigError):
        _prepare_and_run(failing, _spec(cluster), _ctx(tmp_path), None)
    assert failing.calls == [("prepare", False, False)]  # bad input: no cluster started, no warm-up
    job = Recording()
    _prepare_and_run(job, _spec(cluster), _ctx(tmp_path), None)
    assert job.calls == [("prepare", False, False), ("warm_up", True), ("run", True, "prepared"), ("close", None)]


def test_the_user_error_reported_is_the_one_meant() -> None:
    from core.errors import DataError
    from orchestrator.failures import as_user_error

    def missing_image() -> None:  # core/data/multimodal.py's shape: the storage error replaced by the dataset's
        try:
            raise ConfigError("image", "s3://b/x.png: no such file or directory")
        except ConfigError:
            raise DataError("d.jsonl", 2, "image s3://b/x.png: no such file") from None

    with pytest.raises(DataError) as err:
        missing_image()
    assert as_user_error(err.value) is err.value  # names the file and line, not the inner field
    wrapped = RuntimeError("worker failed")  # a wrapper with the user's error as its cause
    wrapped.__cause__ = err.value
    assert as_user_error(wrapped) is err.value
