"""`-m` end to end: a sweep over quant.format through the real CLI, attached to the session's Ray head (the
embedded path, where the sweep starts the one cluster its jobs attach to, was run by hand: README "Sweeps")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.e2e

TINY = ["job=quantize", "quant=rtn", "+model.overrides.num_hidden_layers=2", "+model.overrides.hidden_size=256",
        "+model.overrides.intermediate_size=512", "calib.num_samples=4", "calib.seq_len=32", "quant.batch_size=2",
        "quant.export=false"]


def test_a_sweep_runs_one_child_run_per_value_under_one_parent_on_one_cluster(ray_head, storage: Path) -> None:
    from mlflow.tracking import MlflowClient

    result = run_cli(["-m", *TINY, "quant.format=w4g128,w8a8", "job.name=fmt", *ray_head.args], storage,
                     env=ray_head.env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    parent_id = re.search(r"MLflow parent run id: (\w+)  status: FINISHED", result.stdout).group(1)
    table = result.stdout[result.stdout.index("#  job"):]
    assert re.search(r"0\s+fmt-0\s+w4g128\s+FINISHED", table) and re.search(r"1\s+fmt-1\s+w8a8\s+FINISHED", table)
    assert "last_block_rel_err" in table.splitlines()[0]  # the jobs' own summaries

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("orchestrator").experiment_id
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert sorted((r.info.run_name, r.info.status, r.data.params["quant.format"]) for r in children) == [
        ("fmt-0", "FINISHED", "w4g128"), ("fmt-1", "FINISHED", "w8a8")]
    first, second = sorted(children, key=lambda r: r.info.start_time)
    assert second.info.start_time < first.info.end_time  # side by side: 1 CPU each on the head's 4
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.quant.format"] == "w4g128,w8a8"
    assert {a.path for a in client.list_artifacts(parent_id, "sweep")} == {"sweep/summary.txt", "sweep/summary.json"}

    for name in ("fmt-0", "fmt-1"):  # one cluster: the session's head, which every job attached to
        job_log = (storage / name / "logs" / "job.log").read_text()
        assert f"attaching to Ray cluster at {ray_head.address}" in job_log
        assert "started an embedded Ray cluster" not in job_log
    assert f"attaching to Ray cluster at {ray_head.address}" in (storage / "sweeps" / "fmt" / "logs" /
                                                                "sweep.log").read_text()
