"""job=quantize end to end on CPU: real Ray actors, real MLflow, export reload, worker-count independence,
kill-and-resume. Tolerances: none. With float64 stats (conf/quant/*.yaml) and the same calibration batches
on every worker count, 2 workers give bit-identical integers, scales and files to 1 worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32  # the library's own
from safetensors.torch import load_file

from core.quant.load import load_quantized
from jobs.quantize import checkpoint
from kernels.quant import get_op
from tests.conftest import REPO, kill_under, mlflow_run, run_cli, run_id_of
from tests.jobs.conftest import QUANT_ALGOS, TINY_QUANT

ALGOS = QUANT_ALGOS
GPTQ_2W = [*ALGOS["gptq"], "quant.num_workers=2"]


RUNS = {  # this module's jobs, in the order its tests need them
    **{name: ALGOS[name] for name in sorted(ALGOS)}, "gptq-2w": GPTQ_2W,
    "gptq-blocks": [*ALGOS["gptq"], "quant.parallel=blocks"],
    "gptq-blocks-2w": [*ALGOS["gptq"], "quant.parallel=blocks", "quant.num_workers=2"],
}


@pytest.fixture(scope="module", autouse=True)
def _start_runs(quantize_run, fp_dir: Path) -> None:
    """Every job this module checks starts up front, two at a time (tests/jobs/conftest.py: QuantizeRuns)."""
    for name, extra in RUNS.items():
        quantize_run.start(name, *extra)
    quantize_run.start("rtn-from-dir", *ALGOS["rtn"], "model=hf", f"model.path={fp_dir}")


def _export_files(job_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((job_dir / "export").iterdir())}


@pytest.mark.parametrize("algorithm", sorted(ALGOS))
def test_quantize_reload_and_track(algorithm: str, quantize_run, quant_storage: Path) -> None:
    result = quantize_run(algorithm, *ALGOS[algorithm])
    job_dir = quant_storage / algorithm
    export = job_dir / "export"
    config = json.loads((export / "config.json").read_text())
    qc = config["quantization_config"]
    weights = qc["config_groups"]["group_0"]["weights"]
    packed = not qc["config_groups"]["group_0"]["input_activations"]  # weight-only
    assert qc["quant_method"] == "compressed-tensors"
    assert qc["format"] == ("pack-quantized" if packed else "int-quantized")  # SmoothQuant's w8a8: int8 as is
    assert qc["ignore"] == ["lm_head"]
    tensors = load_file(export / "model.safetensors")
    model = load_quantized(export)
    dequantize = get_op("dequantize")
    for index in range(4):
        saved = checkpoint.load_block(checkpoint.block_dir(job_dir / "blocks", index))
        assert len(saved["layers"]) == 7
        for name, layer in saved["layers"].items():
            prefix = f"model.layers.{index}.{name}"
            q = (unpack_from_int32(tensors[f"{prefix}.weight_packed"], weights["num_bits"], layer["qweight"].shape)
                 if packed else tensors[f"{prefix}.weight"])
            assert torch.equal(q, layer["qweight"]), f"{prefix}: stored integers differ from the algorithm's"
            zero = layer["zero"].float()
            if not weights["symmetric"]:
                stored = unpack_from_int32(tensors[f"{prefix}.weight_zero_point"], weights["num_bits"],
                                           layer["zero"].shape, packed_dim=0)
                assert torch.equal(stored, layer["zero"])
            expected = dequantize(layer["qweight"], layer["scale"], zero, weights["group_size"])
            assert torch.equal(model.get_submodule(prefix).weight, expected), prefix
        for key, value in saved["other"].items():  # smoothed norms travel to the export unchanged
            assert torch.equal(model.get_submodule(f"model.layers.{index}").get_parameter(key), value), key
    if algorithm in ("awq", "smoothquant"):
        scales = load_file(export / "smoothing_scales.safetensors")
        assert "model.layers.0.input_layernorm" in scales
    with torch.no_grad():
        logits = model(torch.arange(32).unsqueeze(0)).logits
    assert torch.isfinite(logits).all()
    run = mlflow_run(quant_storage, run_id_of(result.stdout))
    assert run.info.status == "FINISHED" and run.data.params["quant.algorithm"] == algorithm
    for metric in ("block_rel_err", "block_mse", "block_seconds", "mean_weight_rel_err"):
        assert metric in run.data.metrics, metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{quant_storage / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "block_rel_err")] == [0, 1, 2, 3]
    assert "export/model.safetensors" in {a.path for a in client.list_artifacts(run.info.run_id, "export")}


def test_two_workers_give_the_same_export_as_one(quantize_run, quant_storage: Path) -> None:
    quantize_run("gptq", *ALGOS["gptq"])
    quantize_run("gptq-2w", *GPTQ_2W)
    one, two = _export_files(quant_storage / "gptq"), _export_files(quant_storage / "gptq-2w")
    assert one.keys() == two.keys()
    for name in one:
        if name != "quant_info.json":  # records block_seconds
            assert one[name] == two[name], f"{name} differs between 1 and 2 workers"


def test_blocks_mode_is_independent_of_the_worker_count(quantize_run, quant_storage: Path) -> None:
    """parallel=blocks: every block calibrated on FP inputs, by whichever worker takes it."""
    quantize_run("gptq-blocks", *RUNS["gptq-blocks"])
    quantize_run("gptq-blocks-2w", *RUNS["gptq-blocks-2w"])
    one, two = _export_files(quant_storage / "gptq-blocks"), _export_files(quant_storage / "gptq-blocks-2w")
    assert one.keys() == two.keys()
    for name in one:
        if name != "quant_info.json":
            assert one[name] == two[name], f"{name} differs between 1 and 2 block-parallel workers"
    quantize_run("gptq", *ALGOS["gptq"])  # parallel=data: FP inputs instead of the quantized blocks' outputs
    assert _export_files(quant_storage / "gptq")["model.safetensors"] != one["model.safetensors"]


def test_killed_job_resumes_to_a_bit_identical_export(quantize_run, quant_storage: Path, ray_head) -> None:
    quantize_run("gptq-2w", *GPTQ_2W)
    quantize_run.wait_all()  # nothing beside it: the kill must land between block 1's marker and the export
    name, tmp = "gptq-killed", f"/tmp/orch-q-{os.getpid()}"
    cmd = [sys.executable, "-m", "orchestrator", *TINY_QUANT, *GPTQ_2W, f"job.name={name}",
           f"job.storage={quant_storage}", f"cluster.tmp_dir={tmp}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    marker = checkpoint.block_dir(quant_storage / name / "blocks", 1)
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its embedded Ray and the calibration actors
    proc.wait()
    kill_under(tmp)
    assert not (quant_storage / name / "export").exists(), "killed too late: the job had finished"
    result = run_cli([*TINY_QUANT, *GPTQ_2W, *ray_head.args, f"job.name={name}"], quant_storage, env=ray_head.env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "resumed_at: 2" in result.stdout or "resumed_at: 3" in result.stdout, result.stdout[-2000:]
    resumed, reference = _export_files(quant_storage / name), _export_files(quant_storage / "gptq-2w")
    for file in reference:
        if file != "quant_info.json":
            assert resumed[file] == reference[file], f"{file} differs after kill and resume"


def test_manifest_mismatch_is_refused(quantize_run, quant_storage: Path, cli_in_process) -> None:
    quantize_run("rtn", *ALGOS["rtn"])
    result = cli_in_process([*TINY_QUANT, *ALGOS["rtn"], "calib.seed=7", "job.name=rtn"], quant_storage)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: config error: quant.resume: {quant_storage / 'rtn' / 'blocks'} was written for other "
        "quant/calib/model sections"), result.stderr


def test_quantize_from_a_model_directory(quantize_run, quant_storage: Path, fp_dir: Path) -> None:
    """model=hf loads weights from a directory: same FP weights as the config-built run, same export."""
    quantize_run("rtn", *ALGOS["rtn"])
    quantize_run("rtn-from-dir", *ALGOS["rtn"], "model=hf", f"model.path={fp_dir}")
    built, loaded = quant_storage / "rtn" / "export", quant_storage / "rtn-from-dir" / "export"
    assert (built / "model.safetensors").read_bytes() == (loaded / "model.safetensors").read_bytes()
