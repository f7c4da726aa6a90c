"""SFT end to end on CPU: real embedded Ray, 2 DeepSpeed ZeRO-3 workers over gloo, real MLflow."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST_SFT, REPO, kill_under, mlflow_run, run_cli, run_id_of, signal_and_expect

pytestmark = pytest.mark.e2e  # (tests/conftest.py: the end-to-end lane)

STEPS = 8
ARGS = [*FAST_SFT, f"trainer.max_steps={STEPS}", "trainer.checkpoint.every_n_steps=2",
        "trainer.checkpoint.keep_last=10"]
LOSS_TOLERANCE = 1e-5  # same seeds, same data order, same CPU kernels: resumed losses match


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sft") / "runs"


def _start(storage: Path, name: str, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    """The CLI in the background, its output in a file (a pipe nobody reads while it runs could fill and stall it)."""
    cmd = [sys.executable, "-m", "orchestrator", *ARGS, f"job.name={name}", f"job.storage={storage}",
           f"cluster.tmp_dir=/tmp/orch-{name}-{os.getpid()}", *extra]
    log = storage.parent / f"{name}-{time.time_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, env={**os.environ, **(env or {})})
    return proc, log


@pytest.fixture(scope="module")
def reference_run(storage: Path):
    """The uninterrupted run (embedded Ray with the dashboard, as `make run`), started when the module begins so
    the kill test's jobs run beside it: one job leaves the 2 cores half idle (imports, Ray start-up)."""
    proc, log = _start(storage, "reference", "cluster.include_dashboard=true")
    yield proc, log
    if proc.poll() is None:  # a failure left it running: end it, its embedded Ray too
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kill_under(f"/tmp/orch-reference-{os.getpid()}")


@pytest.fixture(scope="module")
def reference(reference_run: tuple[subprocess.Popen, Path], storage: Path) -> dict:
    proc, log = reference_run
    proc.wait(timeout=900)
    output = log.read_text()
    assert proc.returncode == 0, output[-4000:]
    summary = json.loads((storage / "reference" / "summary.json").read_text())
    return {"run_id": run_id_of(output), "stdout": output,
            "losses": {e["step"]: e["loss"] for e in summary["losses"]}}


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"run ended before {path} appeared:\n{log.read_text()[-4000:]}"
        assert time.time() < deadline, f"timed out waiting for {path}"
        time.sleep(0.5)


def _kill_and_wait(pid: int, timeout: float = 30) -> None:
    import psutil

    try:
        proc = psutil.Process(pid)
        proc.kill()
        proc.wait(timeout)
    except psutil.NoSuchProcess:
        pass


def _assert_losses_match(losses: dict, reference: dict) -> None:
    assert losses, "no steps ran"
    for step, loss in losses.items():
        assert abs(loss - reference["losses"][step]) < LOSS_TOLERANCE, (step, loss, reference["losses"][step])


def test_killed_run_then_killed_worker_resume_with_the_same_losses(reference_run, storage: Path, ray_head,
                                                                    request: pytest.FixtureRequest) -> None:
    """The whole job (driver, embedded Ray, workers) is SIGKILLed at its step-2 checkpoint; rerun, it resumes
    from its latest checkpoint; then one of its workers is SIGKILLed and Ray Train restarts the worker group
    from the newest checkpoint and finishes. Every loss logged after either interruption (steps replayed
    after the restart included) equals the uninterrupted run's. One job for both: one CLI start-up less. First
    in the module: it runs while the reference does (its own store: two new sqlite stores, no race)."""
    from mlflow.tracking import MlflowClient

    storage = storage.parent / "kill-runs"
    job_dir = storage / "killed"
    proc, log = _start(storage, "killed")
    _wait_for(job_dir / "checkpoints" / "step_000002" / "COMPLETE", proc, log)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its embedded Ray and its workers
    proc.wait()
    killed_run = run_id_of(log.read_text())
    kill_under(f"/tmp/orch-killed-{os.getpid()}")
    # Ray retitles its worker processes ("ray::RayTrainWorker..."): kill_under cannot see them, and an orphaned
    # pair trained on for a few seconds and wrote the next checkpoint (seen twice). Kill them by their pid files.
    for pid_file in (job_dir / "workers").glob("rank*.pid"):
        _kill_and_wait(int(pid_file.read_text()))
        pid_file.unlink()
    assert not (job_dir / "summary.json").exists(), "killed too late: the job had finished"
    resumed_at = max(int(p.parent.name.split("_")[1]) for p in (job_dir / "checkpoints").glob("step_*/COMPLETE"))
    assert resumed_at <= 4, f"killed too late (step {resumed_at}): no room left for the worker kill"
    proc, log = _start(storage, "killed", *ray_head.args, env=ray_head.env)  # the rerun attaches to the session head
    _wait_for(job_dir / "checkpoints" / f"step_{resumed_at + 2:06d}" / "COMPLETE", proc, log)  # the rerun's
    os.kill(int((job_dir / "workers" / "rank1.pid").read_text()), signal.SIGKILL)
    proc.wait(timeout=600)
    output = log.read_text()
    assert proc.returncode == 0, output[-4000:]
    summary = json.loads((job_dir / "summary.json").read_text())
    assert summary["final_step"] == STEPS and summary["resumed_at"] >= resumed_at + 2, summary
    # the rerun, then the restart; each from this job's own checkpoint (the job's record, not relayed stdout)
    assert [r["step"] for r in summary["resumes"]] == [resumed_at, summary["resumed_at"]], summary["resumes"]
    assert all(r["from"].endswith(f"/killed/checkpoints/step_{r['step']:06d}") for r in summary["resumes"])
    reference = request.getfixturevalue("reference")
    _assert_losses_match({e["step"]: e["loss"] for e in summary["losses"]}, reference)
    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    # left RUNNING by the SIGKILL; the rerun (holding the job's lock, so that process is gone) ended it, linked
    killed = client.get_run(killed_run)
    assert killed.info.status == "KILLED" and "stopped without ending it" in killed.data.tags["error"]
    assert client.get_run(run_id_of(output)).data.tags["resumed_from_run"] == killed_run
    logged = client.get_metric_history(run_id_of(output), "loss")
    assert {m.step for m in logged} == set(range(resumed_at + 1, STEPS + 1)), [m.step for m in logged]
    for m in logged:
        assert abs(m.value - reference["losses"][m.step]) < LOSS_TOLERANCE, (m.step, m.value)


def _signalled(storage: Path, name: str, signum: int, after: int) -> int:
    """Start the job (embedded Ray), send `signum` once it has logged step `after`: it stops after the step in
    progress (a step or two later: the driver's handler runs between its waits on Ray) with a checkpoint of it.
    The step it stopped at."""
    proc, log = _start(storage, name, "trainer.log_every=1")
    deadline, job_log = time.time() + 300, storage / name / "logs" / "job.log"  # step lines: a bar on the console
    while not (job_log.exists() and re.search(rf"step {after}/{STEPS} ", job_log.read_text())):
        assert proc.poll() is None, f"run ended before step {after}:\n{log.read_text()[-4000:]}"
        assert time.time() < deadline, f"timed out waiting for step {after}"
        time.sleep(0.1)
    output = signal_and_expect(proc, log, signum)
    run = mlflow_run(storage, run_id_of(output))
    assert run.info.status == "KILLED" and run.data.tags["error"] == f"interrupted by {signal.Signals(signum).name}"
    stopped = int(re.findall(r"stopped after step (\d+) \(signal\), checkpoint saved", output)[-1])
    assert (storage / name / "checkpoints" / f"step_{stopped:06d}" / "COMPLETE").exists()
    assert not (storage / name / "summary.json").exists()
    return stopped


def test_sigint_then_sigterm_stop_after_the_step_and_the_rerun_has_the_same_losses(
        reference: dict, storage: Path, ray_head) -> None:
    """Ctrl-C, then SIGTERM (what Kubernetes and `timeout` send) to the rerun; each stops after its step with a
    checkpoint (exit 130, 143; run KILLED; no Ray process left); the last rerun finishes with the uninterrupted
    run's losses."""
    storage = storage.parent / "signal-runs"
    first = _signalled(storage, "signalled", signal.SIGINT, after=2)
    second = _signalled(storage, "signalled", signal.SIGTERM, after=first + 1)  # the rerun's first step
    assert first < second < STEPS, (first, second)
    result = run_cli([*ARGS, *ray_head.args, "job.name=signalled"], storage, env=ray_head.env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((storage / "signalled" / "summary.json").read_text())
    assert [r["step"] for r in summary["resumes"]] == [first, second], summary["resumes"]
    _assert_losses_match({e["step"]: e["loss"] for e in summary["losses"]}, reference)


def test_loss_falls_and_run_is_tracked(reference: dict, storage: Path) -> None:
    losses = reference["losses"]
    assert losses[STEPS] < losses[1] - 1.0, losses
    run = mlflow_run(storage, reference["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.max_steps"] == str(STEPS)
    assert int(run.data.params["model.total_params"]) > 9_000_000  # full count, not a ZeRO-3 shard
    assert run.data.tags["job.kind"] == "sft"
    for metric in ("loss", "lr", "grad_norm", "tgs", "tgs_e2e", "step_time", "data_time", "tokens", "mem_rss_gib"):
        assert metric in run.data.metrics, metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    assert len(client.get_metric_history(run.info.run_id, "loss")) == STEPS
    artifacts = {a.path for d in ("spec", "model", "export") for a in client.list_artifacts(run.info.run_id, d)}
    for name in ("spec/resolved.yaml", "model/tree.txt", "model/parameters.json", "export/model.safetensors",
                 "export/config.json", "export/generation_config.json", "export/tokenizer.json"):
        assert name in artifacts, (name, artifacts)  # tracking.log_exports=auto: a small export is copied
    assert run.data.tags["export_uri"] == str(storage / "reference" / "export")


def test_console_has_a_progress_bar_and_no_start_up_noise_and_the_job_log_has_every_step(reference: dict,
                                                                                          storage: Path) -> None:
    """The reference run (embedded Ray with its dashboard, as `make run`), stdout and stderr as a terminal shows them:
    no line of Ray's or DeepSpeed's start-up (kept in the job's log file instead), a progress bar with an ETA over
    the steps instead of their lines; the job log has every step line, Ray's and DeepSpeed's lines, and so does the
    copy in MLflow; the metrics of every step are in MLflow (test_loss_falls_and_run_is_tracked)."""
    output = reference["stdout"]
    for noise in ("Started a local Ray instance", "Token authentication", "Requesting resources",
                  "Started training worker group", "PreemptionWatcher", "Setting up process group",
                  "[real_accelerator.py", "built successfully", "(TrainController",
                  # torchao (the test extra installs it) at import, in every process that builds a model
                  "Failed to load", "Detected no triton", "is an Enum subclass"):
        assert noise not in output, (noise, output[-3000:])
    bar = rf"sft: 100%\S* {STEPS}/{STEPS} \[[\d:]+<[\d:]+,\s+[\d.]+(s/step|step/s), loss="  # elapsed<ETA, rate
    assert re.search(bar, output), output[-3000:]
    assert not re.search(r"^step \d+/", output, re.MULTILINE)  # the bar stands for them
    job_log = (storage / "reference" / "logs" / "job.log").read_text()
    steps = re.findall(rf"\(RayTrainWorker pid=\d+\) step (\d+)/{STEPS} loss=\S+ lr=\S+ .*tgs=", job_log)
    assert [int(s) for s in steps] == list(range(1, STEPS + 1)), job_log[-3000:]
    for kept in ("Started a local Ray instance", "Started training worker group", "Setting up process group"):
        assert kept in job_log, kept
    from mlflow.tracking import MlflowClient

    copy = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}").download_artifacts(
        reference["run_id"], "logs/job.log", str(storage.parent / "logs-copy"))
    assert f"step {STEPS}/{STEPS} loss=" in Path(copy).read_text()


def test_export_reloads_with_the_trained_weights(reference: dict, storage: Path) -> None:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job_dir = storage / "reference"
    exported = AutoModelForCausalLM.from_pretrained(job_dir / "export", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(job_dir / "export")
    trained = AutoModelForCausalLM.from_config(exported.config).eval()
    state = get_fp32_state_dict_from_zero_checkpoint(str(job_dir / "checkpoints"), tag=f"step_{STEPS:06d}")
    trained.load_state_dict(state, strict=False)
    trained.tie_weights()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], return_tensors="pt",
                                        add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        assert torch.equal(exported(ids).logits, trained(ids).logits)
    # served as trained: the dtype the input model declares (qwen3_tiny: none, so float32), the KV cache on (training
    # turned it off), the tokenizer's eos (its chat template's end of turn) and pad in both configs
    config = json.loads((job_dir / "export" / "config.json").read_text())
    generation = json.loads((job_dir / "export" / "generation_config.json").read_text())
    assert config["dtype"] == "float32" and config["use_cache"] is True and exported.dtype == torch.float32
    for fields in (config, generation):
        assert (fields["eos_token_id"], fields["pad_token_id"]) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert tokenizer.eos_token == "<|im_end|>" and exported.generation_config.eos_token_id == tokenizer.eos_token_id


def test_chunked_loss_fused_ops_block_hooks_and_recompute_train_like_the_reference(reference: dict,
                                                                                    storage: Path) -> None:
    """trainer.loss_chunk_tokens under ZeRO-3 (2 workers over gloo: lm_head gathered by its own hooks for each
    chunk and its recompute): the reference run's losses, step by step, up to float32 summation order.
    The same run profiles step 3 (trainer.profile_step) and runs the fused ops compiled (trainer.fused_ops, inductor
    on this CPU, each chunk's cross entropy too), ZeRO-3's hooks per decoder layer (trainer.zero.granularity=block,
    every parameter partitioned over the 2 workers) and activation checkpointing (the layers' recompute inside those
    hooks), none of which may change its loss either. It saves no checkpoint (trainer.checkpoint.save=false) and
    still exports."""
    proc, log = _start(storage, "chunked", "trainer.loss_chunk_tokens=64", "trainer.profile_step=3",
                       "trainer.fused_ops=true", "trainer.checkpoint.save=false", "trainer.checkpoint.every_n_steps=0",
                       "trainer.zero.granularity=block",
                       "trainer.activation_checkpointing=true")
    proc.wait(timeout=900)
    output = log.read_text()
    assert proc.returncode == 0, output[-4000:]
    losses = {e["step"]: e["loss"] for e in json.loads((storage / "chunked" / "summary.json").read_text())["losses"]}
    assert sorted(losses) == sorted(reference["losses"])
    for step, loss in losses.items():
        assert abs(loss - reference["losses"][step]) < 1e-4 * reference["losses"][step], (step, loss)
    assert not (storage / "chunked" / "checkpoints").exists() and (storage / "chunked" / "export").is_dir()
    assert "profile of step 3 (rank 0):" in output and "ZeRO-3 hooks per block: Qwen3DecoderLayer" in output
    assert re.search(r"fused ops: Qwen3Attention x1, Qwen3MLP x\d+, Qwen3RMSNorm x\d+", output), output[-4000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    run_id = run_id_of(output)
    assert {a.path for a in client.list_artifacts(run_id, "profile")} == {
        "profile/step3_ops.txt", "profile/step3_trace.json"}
    ops = client.download_artifacts(run_id, "profile/step3_ops.txt", str(storage.parent))
    assert "aten::mm" in Path(ops).read_text()  # the step's matmuls were recorded


def test_a_diverging_run_stops_at_the_step_naming_it(storage: Path, ray_head) -> None:
    """lr 1e30: the first update makes the next gradient overflow; DeepSpeed would skip every later step silently
    (the loss stays finite, the model frozen). The job stops there: one line naming the step, exit 2, FAILED."""
    result = run_cli([*FAST_SFT, "trainer.max_steps=4", "trainer.optim.lr=1e30", "trainer.optim.warmup_steps=0",
                      "trainer.max_failures=0", "job.name=diverged", *ray_head.args], storage, env=ray_head.env)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert errors[0].startswith("error: numeric error: step 2: the gradient norm is inf"), errors[0]
    run = mlflow_run(storage, run_id_of(result.stdout))
    assert run.info.status == "FAILED" and run.data.tags["error"].startswith("numeric error: step 2")
    assert not (storage / "diverged" / "export").exists()
