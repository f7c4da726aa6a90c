"""job=sensitivity end to end on CPU (real Ray actors, 2 workers, real MLflow), then quant=mixed applying its
choices from the run's MLflow id. Worker-count independence of the scores: test_scoring.py (shard sums)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.quant.load import load_quantized
from core.quant.recipe import load_recipe
from jobs.sensitivity.report import recompute_effective_bits
from tests.conftest import mlflow_run, run_cli, run_id_of
from tests.jobs.conftest import TINY_QUANT

MODEL = TINY_QUANT[1:4]  # the quantize tests' model (4 blocks, hidden 256): fp_dir holds its FP weights
# 9 bits: w8 everywhere costs 8.06 (a 16-bit scale per row), the rest buys fp16 for the most sensitive
SENS = ["job=sensitivity", *MODEL, "calib.num_samples=8", "calib.seq_len=64", "search.batch_size=2",
        "search.num_workers=2", "search.candidates=[w4g128,w8,fp16]", "search.effective_bits=9",
        "cluster.include_dashboard=false",
        "search.cpus_per_worker=3"]  # one worker at a time on the 4-CPU head: the second waits for the first's place


@pytest.fixture(scope="module")
def sens(quant_storage: Path, ray_head) -> dict:
    result = run_cli([*SENS, *ray_head.args, "job.name=sens"], quant_storage, env=ray_head.env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return {"run_id": run_id_of(result.stdout), "report": quant_storage / "sens" / "report", "stderr": result.stderr}


def test_report_adds_up_and_is_tracked(sens: dict, quant_storage: Path) -> None:
    assert re.search(r"score: 100%\S* (\d+)/\1 \[", sens["stderr"])  # the bar over the first worker's batches
    manifest = json.loads((sens["report"] / "report.json").read_text())
    headline = manifest["search"]["effective_bits"]
    assert headline <= 9.0 and manifest["search"]["exact"]
    assert len(manifest["handles"]) == 16  # q/k/v, o, gate/up, down x 4 blocks; lm_head excluded and listed
    assert "lm_head" in manifest["header"]["excluded"]
    for file in ("report.json", "report.csv", "report.md"):
        assert recompute_effective_bits(sens["report"] / file) == pytest.approx(headline, abs=1e-9), file
    run = mlflow_run(quant_storage, sens["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["effective_bits"] == pytest.approx(headline, abs=1e-9)
    # the slowest worker's timings (CPU here: no GPU peak); the workers run inside the driver's wall time
    assert 0 < run.data.metrics["score_seconds"] and 0 < run.data.metrics["load_seconds"]
    assert max(run.data.metrics["score_seconds"], run.data.metrics["load_seconds"]) < run.data.metrics["scan_seconds"]
    m = run.data.metrics  # the slowest worker's start (before its load), the weights' part of the load
    assert 0 <= m["start_seconds"] < m["scan_seconds"] and 0 < m["weights_seconds"] <= m["load_seconds"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{quant_storage / 'mlflow.db'}")
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "sensitivity")}
    assert {"sensitivity/report.md", "sensitivity/report.json", "sensitivity/report.csv"} <= logged, logged
    assert any(p.endswith(".png") for p in logged), logged


def test_mixed_precision_from_the_sensitivity_run(sens: dict, quant_storage: Path, fp_dir: Path, ray_head) -> None:
    chosen = load_recipe(str(sens["report"]))
    assert "fp16" in chosen.values() and len(set(chosen.values())) >= 2, chosen
    for i in range(4):  # what serving engines fuse got one format (the default search.handles=serving)
        for fused in (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj")):
            assert len({chosen[f"model.layers.{i}.{n}"] for n in fused}) == 1, (i, fused)
    result = run_cli([*TINY_QUANT, "quant=mixed", f"quant.recipe={sens['run_id']}", *ray_head.args, "job.name=mixed"],
                     quant_storage, env=ray_head.env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    export = quant_storage / "mixed" / "export"
    qc = json.loads((export / "config.json").read_text())["quantization_config"]
    targets = {name: g["weights"] for g in qc["config_groups"].values() for name in g["targets"]}
    tensors, fp = load_file(export / "model.safetensors"), load_file(fp_dir / "model.safetensors")
    for name, fmt in chosen.items():
        if fmt == "fp16":  # left unquantized: the FP weights, listed in ignore
            assert name in qc["ignore"] and f"{name}.weight_packed" not in tensors
            assert torch.equal(tensors[f"{name}.weight"], fp[f"{name}.weight"]), name
        else:
            bits, group = (4, 128) if fmt == "w4g128" else (8, None)
            assert (targets[name]["num_bits"], targets[name]["group_size"]) == (bits, group), name
            assert f"{name}.weight_packed" in tensors, name
    with torch.no_grad():
        assert torch.isfinite(load_quantized(export)(torch.arange(16).unsqueeze(0)).logits).all()


def test_infeasible_budget_fails_before_ray(storage: Path, cli_in_process) -> None:
    result = cli_in_process([*SENS, "search.effective_bits=3", "job.name=tight"], storage)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: config error: search.effective_bits: budget 3 bits cannot be met"), line
    assert "smallest achievable is 4." in line, line


def test_loss_delta_scores_through_the_job(quant_storage: Path, ray_head) -> None:
    """search.score=loss_delta end to end (2 workers, real Ray and MLflow): the report says which score it holds,
    adds up, and its unquantized candidates score 0 (the values themselves: test_loss_delta.py)."""
    result = run_cli([*SENS, "search.score=loss_delta", *ray_head.args, "job.name=sens-ld"], quant_storage,
                     env=ray_head.env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = quant_storage / "sens-ld" / "report"
    manifest = json.loads((report / "report.json").read_text())
    assert manifest["header"]["score"].startswith("loss delta")
    assert recompute_effective_bits(report / "report.md") == pytest.approx(manifest["search"]["effective_bits"])
    scores = [h["candidates"] for h in manifest["handles"]]
    assert all(c["fp16"]["score"] == 0.0 for c in scores)
    assert sum(c["w4g128"]["score"] != 0.0 for c in scores) > len(scores) // 2


def test_unknown_score_method_is_one_line(storage: Path, cli_in_process) -> None:
    result = cli_in_process([*SENS, "search.score=hessian", "job.name=bad-score"], storage)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: config error: search.score: must be one of gradient, loss_delta (got 'hessian')")
