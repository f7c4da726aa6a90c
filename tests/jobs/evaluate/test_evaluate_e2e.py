"""job=evaluate end to end: a quantized export vs its FP model on the same held-out tokens."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import mlflow_run, run_cli, run_id_of
from tests.jobs.conftest import QUANT_ALGOS


def test_perplexity_table_and_tracking(quantize_run, quant_storage: Path, fp_dir: Path, ray_head) -> None:
    quantize_run("rtn", *QUANT_ALGOS["rtn"])
    export = quant_storage / "rtn" / "export"
    result = run_cli(["job=evaluate", "model=hf", f"model.path={export}", f"eval.compare_to={fp_dir}",
                      "eval.num_samples=8", "eval.seq_len=64", "cluster.include_dashboard=false",
                      "job.parent_run=abc123", *ray_head.args], quant_storage, env=ray_head.env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "| model | path | perplexity | nll/token | tokens |" in result.stdout
    assert f"| compare_to | {fp_dir} |" in result.stdout
    run = mlflow_run(quant_storage, run_id_of(result.stdout))
    metrics = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.tags["job.parent_run"] == "abc123"
    assert metrics["tokens"] == metrics["compare_to.tokens"] == 8 * 63  # the same tokens for both
    # a random-init model: perplexity ~ vocab size; 4-bit RTN moves it by well under 10%
    assert 0.9 < metrics["perplexity_ratio"] < 1.1, metrics
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{quant_storage / 'mlflow.db'}")
    assert "eval/perplexity.md" in {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
