"""job=evaluate eval=lm_eval end to end on the session's Ray head: the shipped task (data/lm_eval) on a quantized
export (RTN w4g128 of the session's quantize runs) vs its FP model; every metric and both results JSONs in MLflow,
the accuracies equal to the loglikelihood argmax by hand (and the FP model's to the harness's own run on its
directory); a registry task whose dataset is not cached fails offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import mlflow_run, run_cli, run_id_of
from tests.jobs.conftest import QUANT_ALGOS
from tests.jobs.evaluate.test_lm_eval import TASKS, hand_scored, harness_on_directory, one_thread, shipped_rows

# an endpoint nothing answers: a download the offline switch missed fails instead of passing unnoticed
NO_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9"}


def test_lm_eval_task_on_a_quantized_export_vs_fp(quantize_run, quant_storage: Path, fp_dir: Path, ray_head,
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    from core.models.byte_tokenizer import byte_tokenizer
    from core.quant.load import load_quantized
    from jobs.evaluate.harness import Tasks, read_task_files

    monkeypatch.setenv("ORCHESTRATOR_CACHE", str(tmp_path / "cache"))  # the task copies of this process and the driver
    quantize_run("rtn", *QUANT_ALGOS["rtn"])
    export = quant_storage / "rtn" / "export"
    result = run_cli(["job=evaluate", "model=hf", f"model.path={export}", f"eval.compare_to={fp_dir}", "eval=lm_eval",
                      f"eval.task_paths=[{TASKS}]", "eval.tasks=[demo_facts]", "cluster.include_dashboard=false",
                      *ray_head.args], quant_storage, env={**ray_head.env, **NO_HUB})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "| model | path | demo_facts/acc | demo_facts/acc_norm |" in result.stdout
    assert not {"Running loglikelihood", "Tokenizing inputs", "fatal:"} & set(result.stderr.split())  # quiet
    run = mlflow_run(quant_storage, run_id_of(result.stdout))
    m = run.data.metrics
    assert run.info.status == "FINISHED", run.data.tags.get("error")
    tokenizer, tasks = byte_tokenizer(), Tasks(["demo_facts"], read_task_files([str(TASKS)]), False)
    # the export as the project loads it (transformers cannot load this asymmetric one: README, Serving the export)
    for prefix, model in [("", load_quantized(export)),
                          ("compare_to.", AutoModelForCausalLM.from_pretrained(fp_dir, dtype=torch.float32).eval())]:
        with one_thread():
            expected = hand_scored(model, tokenizer, shipped_rows())
        for metric in ("acc", "acc_norm"):
            assert m[f"{prefix}lm_eval/demo_facts/{metric}"] == pytest.approx(expected[metric], abs=1e-12), (m, prefix)
        assert f"{prefix}lm_eval/demo_facts/acc_stderr" in m
    with one_thread():
        own = harness_on_directory(fp_dir, tasks)["demo_facts"]
    assert (own["acc,none"], own["acc_norm,none"]) == (m["compare_to.lm_eval/demo_facts/acc"],
                                                       m["compare_to.lm_eval/demo_facts/acc_norm"])
    assert m["lm_eval/demo_facts/acc_delta"] == pytest.approx(m["lm_eval/demo_facts/acc"]
                                                              - m["compare_to.lm_eval/demo_facts/acc"])
    client = MlflowClient(tracking_uri=f"sqlite:///{quant_storage / 'mlflow.db'}")
    listed = {a.path for a in client.list_artifacts(run.info.run_id, "eval/lm_eval")}
    assert listed == {"eval/lm_eval/model.json", "eval/lm_eval/compare_to.json"}
    for label, prefix in [("model", ""), ("compare_to", "compare_to.")]:
        path = client.download_artifacts(run.info.run_id, f"eval/lm_eval/{label}.json", str(quant_storage.parent))
        results = json.loads(Path(path).read_text())
        assert results["results"]["demo_facts"]["acc,none"] == m[f"{prefix}lm_eval/demo_facts/acc"]
        assert results["n-samples"]["demo_facts"]["effective"] == len(shipped_rows())


def test_registry_task_without_its_dataset_fails_offline(fp_dir: Path, quant_storage: Path, ray_head) -> None:
    result = run_cli(["job=evaluate", "model=hf", f"model.path={fp_dir}", "eval=lm_eval", "eval.tasks=[arc_easy]",
                      "eval.limit=2", "cluster.include_dashboard=false", *ray_head.args], quant_storage,
                     env={**ray_head.env, **NO_HUB})
    assert result.returncode == 2, result.stdout[-4000:] + result.stderr[-4000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "config error: eval.tasks: " in errors[0] and "OfflineModeIsEnabled" in errors[0]
    assert "Traceback" not in result.stderr
