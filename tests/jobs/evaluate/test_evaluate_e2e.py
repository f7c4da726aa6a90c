"""job=evaluate end to end: a quantized export vs its FP model on the same held-out tokens (perplexity, per-token
KL, top-1 agreement), on one worker and on two (the same metrics exactly); GPU placement asked of a CPU cluster."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import mlflow_run, run_cli, run_id_of
from tests.jobs.conftest import QUANT_ALGOS

HEADER = "| model | path | perplexity | nll/token | tokens | KL mean | KL p99 | top-1 agree | ppl delta |"


def test_perplexity_kl_and_two_workers(quantize_run, quant_storage: Path, fp_dir: Path, ray_head) -> None:
    quantize_run("rtn", *QUANT_ALGOS["rtn"])
    export = quant_storage / "rtn" / "export"
    args = ["job=evaluate", "model=hf", f"model.path={export}", f"eval.compare_to={fp_dir}", "eval.num_samples=8",
            "eval.seq_len=64", "eval.batch_size=2", "cluster.include_dashboard=false", *ray_head.args]
    with ThreadPoolExecutor(max_workers=2) as pool:  # the store exists (the quantize run made it): side by side
        extras = (["job.name=eval-w1", "job.parent_run=abc123"], ["job.name=eval-w2", "eval.num_workers=2"])
        jobs = [pool.submit(run_cli, [*args, *extra], quant_storage, env=ray_head.env) for extra in extras]
        one, two = (job.result() for job in jobs)
    for result in (one, two):
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        assert HEADER in result.stdout and f"| compare_to | {fp_dir} |" in result.stdout
        assert "\neval_tokens_per_second: " in result.stdout and "\neval_seconds: " in result.stdout
    run = mlflow_run(quant_storage, run_id_of(one.stdout))
    m = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.tags["job.parent_run"] == "abc123"
    assert m["tokens"] == m["compare_to.tokens"] == 8 * 63  # the same tokens for both
    # a random-init model: perplexity ~ vocab size; 4-bit RTN moves it by well under 10%, and moves the
    # next-token distributions a little everywhere
    assert 0.9 < m["perplexity_ratio"] < 1.1, m
    assert 0 < m["kl_mean"] < m["kl_p99"] <= m["kl_max"] and 0.5 < m["top1_agreement"] < 1.0, m
    assert m["delta_perplexity"] == pytest.approx(m["perplexity"] - m["compare_to.perplexity"], rel=1e-9)
    assert m["eval_tokens_per_second"] > 0 and m["eval_seconds"] > 0
    # two workers: the batches split, the per-token scores gathered in order: every metric the same, to the bit
    scores = {k: v for k, v in m.items() if not k.startswith(("time_", "eval_"))}
    m2 = mlflow_run(quant_storage, run_id_of(two.stdout)).data.metrics
    assert {k: v for k, v in m2.items() if not k.startswith(("time_", "eval_"))} == scores
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{quant_storage / 'mlflow.db'}")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/perplexity.md", "eval/kl_histogram.png"} <= artifacts, artifacts


@pytest.mark.e2e
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a cluster without GPUs")
def test_use_gpu_true_asks_a_gpu_per_worker(fp_dir: Path, storage: Path, cli_in_process) -> None:
    result = cli_in_process(["job=evaluate", "model=hf", f"model.path={fp_dir}", "eval.use_gpu=true",
                             "eval.num_samples=4", "eval.seq_len=32", "cluster.num_cpus=2",
                             "cluster.include_dashboard=false", f"cluster.tmp_dir=/tmp/orch-eval-gpu-{os.getpid()}"],
                            storage)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and errors == [
        "error: config error: eval.use_gpu: 1 worker(s) of 1 CPU + 1 GPU each do not fit the cluster's nodes "
        "(2 CPU + 0 GPU); Ray would wait for them forever"], result.stderr[-2000:]
