"""job=sensitivity end to end on CPU: real Ray tasks, real MLflow; 1 vs 2 workers; bad budgets fail early."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.sensitivity.report import recompute_effective_bits
from tests.conftest import mlflow_run, run_cli, run_id_of

TINY = ["job=sensitivity", "+model.overrides.num_hidden_layers=2", "+model.overrides.hidden_size=256",
        "+model.overrides.intermediate_size=512", "calib.num_samples=8", "calib.seq_len=64", "search.batch_size=2",
        "search.candidates=[w4g128,w8,fp16]", "search.effective_bits=6", "cluster.include_dashboard=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    storage = tmp_path_factory.mktemp("sensitivity") / "runs"
    results = {}
    for name, extra in (("one", []), ("two", ["search.num_workers=2"])):
        result = run_cli([*TINY, *extra, f"job.name={name}"], storage)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        results[name] = result
    return storage, results


def _manifest(storage: Path, name: str) -> dict:
    return json.loads((storage / name / "report" / "report.json").read_text())


def test_report_adds_up_and_is_tracked(runs) -> None:
    storage, results = runs
    report = storage / "one" / "report"
    manifest = _manifest(storage, "one")
    headline = manifest["search"]["effective_bits"]
    assert headline <= 6.0
    for file in ("report.json", "report.csv"):
        assert recompute_effective_bits(report / file) == pytest.approx(headline, abs=1e-9), file
    run = mlflow_run(storage, run_id_of(results["one"].stdout))
    assert run.info.status == "FINISHED"
    assert run.data.metrics["effective_bits"] == pytest.approx(headline, abs=1e-9)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "sensitivity")}
    assert {"sensitivity/report.md", "sensitivity/report.json", "sensitivity/report.csv"} <= logged, logged
    assert any(p.endswith(".png") for p in logged), logged


def test_two_workers_give_the_same_scores(runs) -> None:
    storage, _ = runs
    one, two = _manifest(storage, "one"), _manifest(storage, "two")
    assert one["choices"] == two["choices"]
    assert len(one["handles"]) == 14  # 7 Linears x 2 blocks, lm_head excluded (listed in the header)
    assert "lm_head" in one["header"]["excluded"]
    for h1, h2 in zip(one["handles"], two["handles"], strict=True):
        for cand, entry in h1["candidates"].items():
            # float64 sums of identical per-batch terms, added in another order
            assert h2["candidates"][cand]["score"] == pytest.approx(entry["score"], rel=1e-9), (h1["name"], cand)


def test_infeasible_budget_fails_before_ray(storage: Path, cli_in_process) -> None:
    result = cli_in_process([*TINY, "search.effective_bits=3", "job.name=tight"], storage)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: config error: search.effective_bits: budget 3 bits cannot be met"), line
    assert "smallest achievable is 4." in line, line
