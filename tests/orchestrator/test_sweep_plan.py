"""A sweep's plan (orchestrator/sweep_plan.py) and summary table (sweep_table.py), without running a job."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.compose import App
from orchestrator.sweep_plan import Demand, demand, plan
from orchestrator.sweep_table import Row, table


def test_every_combination_composed_named_and_checked(tmp_path: Path) -> None:
    sweep = plan(App(), ["job=quantize", "quant.format=w4g128,w8a8", "calib.num_samples=8,16", "job.name=q",
                         f"job.storage={tmp_path}"])
    assert [job.name for job in sweep.jobs] == ["q-0", "q-1", "q-2", "q-3"] and sweep.name == "q"
    assert [job.swept for job in sweep.jobs] == [
        {"quant.format": "w4g128", "calib.num_samples": "8"}, {"quant.format": "w4g128", "calib.num_samples": "16"},
        {"quant.format": "w8a8", "calib.num_samples": "8"}, {"quant.format": "w8a8", "calib.num_samples": "16"}]
    assert [(j.spec.quant.format, j.spec.calib.num_samples) for j in sweep.jobs][-1] == ("w8a8", 16)
    assert sweep.jobs[1].overrides[-1] == "job.name=q-1" and sweep.tracking_uri.endswith("mlflow.db")


def test_a_job_file_sweeps_through_hydra_sweeper_params(tmp_path: Path) -> None:
    """conf/experiment/demo_sweep_formats.yaml sweeps quant.format; the command line's value for a key wins."""
    shipped = plan(App(), ["+experiment=demo_sweep_formats", f"job.storage={tmp_path}"])
    assert [j.spec.quant.format for j in shipped.jobs] == ["w4g128", "w8a8"]
    assert shipped.jobs[0].name.startswith("quantize-qwen3_tiny-") and shipped.max_concurrent is None
    ours = plan(App(), ["+experiment=demo_sweep_formats", "quant.format=w3g128,w4g64,w8",
                        "hydra.sweeper.max_batch_size=2", f"job.storage={tmp_path}"])
    assert [j.spec.quant.format for j in ours.jobs] == ["w3g128", "w4g64", "w8"] and ours.max_concurrent == 2


@pytest.mark.parametrize(("overrides", "message"), [
    (["job=quantize", "quant.format=w4g128,w5"], "config error: quant.format"),  # a bad value in one job
    (["job=quantize", "tracking.enabled=true,false"], "config error: tracking.uri: a sweep's"),
    (["job=quantize", "cluster.num_cpus=1,2"], "config error: cluster: a sweep's jobs run on one Ray cluster"),
    (["trainer.max_steps=1,abc"], "config error: trainer.max_steps: Value 'abc'"),
])
def test_a_bad_job_fails_the_sweep_before_anything_starts(overrides: list[str], message: str, cli_in_process,
                                                          storage: Path) -> None:
    result = cli_in_process(["-m", *overrides], storage)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {message}"), result.stderr
    assert len(result.stderr.splitlines()) == 1 and not storage.exists()  # no run, no cluster, no directory


def test_demand_of_each_kind(tmp_path: Path) -> None:
    jobs = plan(App(), ["job=sft,quantize,inspect,pipeline", "trainer.num_workers=2", "trainer.gpus_per_worker=0.5",
                        "quant.num_workers=3", f"job.storage={tmp_path}"]).jobs
    sft, quantize, inspect, pipeline = (demand(job.spec, cluster_has_gpu=True) for job in jobs)
    assert sft == Demand(2.0, 1.0) and quantize == Demand(3.0, 3.0) and inspect == Demand()
    assert pipeline.exclusive  # stages of several kinds: runs alone
    assert demand(jobs[0].spec, cluster_has_gpu=False) == Demand(2.0, 0.0)  # use_gpu=auto on a CPU cluster


def test_summary_table() -> None:
    rows = [Row(0, "q-0", {"quant.format": "w4g128"}, "FINISHED", 12.34, "0123456789abcdef",
                {"last_block_rel_err": 0.012345, "blocks": 4, "export": "/x"}),
            Row(1, "q-1", {"quant.format": "w8a8"}, "FAILED", 3.0, "", {}, "config error: quant.x: bad")]
    lines = table(rows).splitlines()
    assert lines[0].split() == ["#", "job", "quant.format", "status", "time", "run", "last_block_rel_err", "blocks"]
    assert lines[1].split() == ["0", "q-0", "w4g128", "FINISHED", "12.3s", "0123456789ab", "0.01235", "4"]
    assert lines[2].split() == ["1", "q-1", "w8a8", "FAILED", "3.0s", "-", "-", "-"]
    assert lines[3:] == ["errors:", "  [1] config error: quant.x: bad"]
