"""job=evaluate end to end: a quantized export vs its FP model on the same held-out tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import mlflow_run, run_cli, run_id_of
from tests.jobs.conftest import QUANT_ALGOS


@pytest.fixture(scope="module")
def fp_dir(quant_storage: Path) -> Path:
    """The FP model quantize started from (qwen3_tiny, same overrides, quant.seed=0) as an HF dir."""
    from core.models import MODELS, ModelConfig

    cfg = ModelConfig(name="qwen3_tiny", overrides={"num_hidden_layers": 4, "hidden_size": 256,
                                                     "intermediate_size": 512})
    source = MODELS.get("qwen3_tiny")
    torch.manual_seed(0)
    model = source.build(cfg, source.hf_config(cfg), torch.float32)
    out = quant_storage.parent / "fp"
    model.save_pretrained(out)
    source.tokenizer(cfg).save_pretrained(out)
    return out


def test_perplexity_table_and_tracking(quantize_run, quant_storage: Path, fp_dir: Path) -> None:
    quantize_run("rtn", *QUANT_ALGOS["rtn"])
    export = quant_storage / "rtn" / "export"
    result = run_cli(["job=evaluate", "model=hf", f"model.path={export}", f"eval.compare_to={fp_dir}",
                      "eval.num_samples=8", "eval.seq_len=64", "cluster.include_dashboard=false",
                      "job.parent_run=abc123"], quant_storage)
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
