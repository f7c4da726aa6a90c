"""Faults found once the workers run (attached to the session's head): a NaN in a loaded weight, a disk that fills
during a block checkpoint. One error line naming the tensor or file, exit 2, run FAILED, nothing published."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tests.conftest import mlflow_run, run_cli, run_id_of
from tests.jobs.conftest import QUANT_ALGOS, TINY_QUANT

NAN_TENSOR = "model.layers.1.mlp.up_proj.weight"


def _failed(result, storage: Path, expected: str, job: str) -> None:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert expected in errors[0], errors[0]
    assert errors[0] == result.stderr.strip().splitlines()[-1]
    run = mlflow_run(storage, run_id_of(result.stdout))
    assert run.info.status == "FAILED" and expected in run.data.tags["error"], run.data.tags
    assert not list((storage / job).rglob("COMPLETE")), "something was published"


def test_a_nan_weight_fails_the_job_naming_the_tensor(fp_dir: Path, tmp_path: Path, ray_head) -> None:
    model = Path(shutil.copytree(fp_dir, tmp_path / "nan-model"))
    weights = load_file(model / "model.safetensors")
    weights[NAN_TENSOR][3, 7] = float("nan")
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    storage = tmp_path / "runs"
    result = run_cli([*TINY_QUANT, *QUANT_ALGOS["rtn"], "model=hf", f"model.path={model}", "job.name=nan",
                      *ray_head.args], storage, env=ray_head.env)
    _failed(result, storage, f"numeric error: {NAN_TENSOR}: 1 NaN/Inf value(s) in the weights loaded from {model}",
            "nan")


def test_a_disk_that_fills_during_a_block_checkpoint(tmp_path: Path, ray_head) -> None:
    disk = tmp_path / "small-disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()}): needs root in a "
                    "container that allows mounts")
    try:
        storage, store = disk / "runs", tmp_path / "mlflow"  # the MLflow store elsewhere: only the job's disk fills
        store.mkdir()
        result = run_cli([*TINY_QUANT, *QUANT_ALGOS["rtn"], "job.name=full", f"tracking.uri=sqlite:///{store}/m.db",
                          *ray_head.args], storage, env=ray_head.env)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1, result.stdout[-3000:] + result.stderr[-3000:]
        assert errors[0].startswith("error: i/o error: no space left on device"), errors[0]
        from mlflow.tracking import MlflowClient

        run = MlflowClient(f"sqlite:///{store}/m.db").get_run(run_id_of(result.stdout))
        assert run.info.status == "FAILED" and "no space left on device" in run.data.tags["error"]
        assert not list((storage / "full").rglob("COMPLETE")), "a block was published from a partial write"
    finally:
        subprocess.run(["umount", str(disk)], check=False)



def test_evaluate_never_reports_a_non_finite_score(fp_dir: Path, tmp_path: Path, ray_head) -> None:
    """Finite weights that overflow in the forward (a final norm scaled to 1e38): the perplexity would be NaN or
    inf; the job fails naming the score instead of reporting it."""
    model = Path(shutil.copytree(fp_dir, tmp_path / "overflow-model"))
    weights = load_file(model / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"] * 1e38
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    storage = tmp_path / "runs"
    result = run_cli(["job=evaluate", "model=hf", f"model.path={model}", "eval.num_samples=4", "eval.seq_len=32",
                      "job.name=overflow", *ray_head.args], storage, env=ray_head.env)
    _failed(result, storage, "numeric error: model ", "overflow")
    assert "the score is nan" in result.stderr or "the score is inf" in result.stderr, result.stderr[-2000:]
    assert "perplexity: nan" not in result.stdout and "| model |" not in result.stdout
