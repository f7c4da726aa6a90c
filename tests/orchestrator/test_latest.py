"""python -m orchestrator.latest: the newest finished SFT run's published export, found in a real MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.latest import main


def _export(root: Path, name: str, published: bool = True) -> str:
    path = root / name / "export"
    path.mkdir(parents=True)
    if published:
        (path / "COMPLETE").write_text("")
    return str(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, tuple[str, str]]]:
    """Runs of every kind that must not be picked, around the two that may: name -> (run id, export). One store for
    the module (the tests only read it)."""
    from mlflow.tracking import MlflowClient

    tmp_path = tmp_path_factory.mktemp("latest")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("orchestrator", artifact_location=(tmp_path / "art").as_uri())
    runs = {}
    for end, (name, kind, status, published, extra) in enumerate([
        ("old", "sft", "FINISHED", True, {"release": "yes"}),
        ("new", "sft", "FINISHED", True, {}),
        ("unpublished", "sft", "FINISHED", False, {}),  # its export lost its COMPLETE marker (or never had it)
        ("failed", "sft", "FAILED", True, {}),
        ("quantized", "quantize", "FINISHED", True, {}),
        ("running", "sft", "RUNNING", True, {}),
    ]):
        export = _export(tmp_path / "runs", name, published)
        run = client.create_run(experiment, run_name=name, tags={"job.kind": kind, "export_uri": export, **extra})
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status, end_time=1_800_000_000_000 + end * 1000)
        runs[name] = (run.info.run_id, export)
    return uri, runs


def test_prints_the_newest_finished_published_sft_export(store, capsys) -> None:
    uri, runs = store
    assert main(["--tracking-uri", uri]) == 0
    assert capsys.readouterr().out.strip() == runs["new"][1]
    assert main(["--tracking-uri", uri, "--tag", "release=yes"]) == 0
    assert capsys.readouterr().out.strip() == runs["old"][1]


def test_runs_the_job_on_it(store, capsys, tmp_path: Path) -> None:
    uri, runs = store
    run_id, export = runs["new"]
    assert main(["--tracking-uri", uri, "--", "job=quantize", f"job.storage={tmp_path}", "--cfg", "job"]) == 0
    out = capsys.readouterr().out
    assert f"latest sft export: {export} (run {run_id})" in out
    for line in (f"  path: {export}", f"  parent_run: {run_id}", f"  name: nightly-{run_id}", "  kind: quantize"):
        assert line in out.splitlines(), out


def test_nothing_found_is_one_error_line(store, capsys) -> None:
    uri, _ = store
    assert main(["--tracking-uri", uri, "--tag", "release=never"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: no finished sft run with a published export in experiment 'orchestrator' "
                   "(job.kind=sft, release=never)"]
    assert main(["--tracking-uri", uri, "--experiment", "other"]) == 2
    assert "error: config error: --experiment: no experiment 'other'" in capsys.readouterr().err
