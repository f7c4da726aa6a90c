"""job=pipeline end to end through the real CLI, attached to the session's Ray head: SFT of a small demo model, a
sensitivity scan, mixed-precision quantization with its recipe, evaluation against the SFT export and the gate.
One pipeline, run three times: SIGTERM once SFT has finished, the rerun resuming at the first unfinished stage,
then a rerun whose gate fails (every stage skipped)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from core import storage
from tests.conftest import run_cli, run_id_of, start_cli

PIPELINE = [
    "job=pipeline", "job.name=pipe",
    # SFT: the demo model made smaller, one worker, 2 steps
    "+model.overrides.num_hidden_layers=2", "+model.overrides.hidden_size=256",
    "+model.overrides.intermediate_size=512",
    "trainer.num_workers=1", "trainer.max_steps=2", "trainer.micro_batch_size=1", "data.max_length=256",
    "data.pack_max_length=256", "trainer.zero.param_persistence_threshold=0",
    # sensitivity, quantize (mixed: the recipe from sensitivity), evaluate: a few short samples
    "quant=mixed", "search.candidates=[w4g128,w8]", "search.effective_bits=6", "calib.num_samples=4",
    "calib.seq_len=64", "quant.batch_size=2", "eval.num_samples=4", "eval.seq_len=64",
    "cluster.include_dashboard=false",
]


def _client(storage_dir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{storage_dir / 'mlflow.db'}")


def _children(client, parent: str) -> dict[str, object]:
    runs = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    return {run.data.tags["pipeline.stage"]: run for run in runs}


def test_pipeline_nested_runs_lineage_resume_and_gate(tmp_path: Path, ray_head) -> None:
    runs = tmp_path / "runs"
    root = runs / "pipe"
    args = [*PIPELINE, *ray_head.args, f"job.storage={runs}"]
    began = time.time()
    proc, log = start_cli(args, tmp_path / "first.log", ray_head.env)
    deadline = time.time() + 300
    while not storage.is_published(root / "sft" / "result"):  # SFT finished and recorded: stop the pipeline
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.time() < deadline, "SFT did not finish in time"
        time.sleep(0.2)
    killed_at = time.time()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    first = log.read_text()
    assert proc.returncode == 143, first[-4000:]
    client = _client(runs)
    first_run = run_id_of(first)
    assert client.get_run(first_run).info.status == "KILLED"
    sft = _children(client, first_run)["sft"]
    assert sft.info.status == "FINISHED"

    resumed_at = time.time()
    second = run_cli(args, runs, env=ray_head.env)  # resumes: SFT skipped, the rest run
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    parent = client.get_run(run_id_of(second.stdout))
    tags = parent.data.tags
    assert tags["resumed_from_run"] == first_run and tags["pipeline.sft"] == "skipped"
    assert {tags[f"pipeline.{k}"] for k in ("sensitivity", "quantize", "evaluate")} == {"ran"}
    children = _children(client, parent.info.run_id)
    assert set(children) == {"sensitivity", "quantize", "evaluate"}
    assert all(run.info.status == "FINISHED" for run in children.values())
    quantize, evaluate = children["quantize"], children["evaluate"]
    sft_export, export = str(root / "sft" / "export"), str(root / "quantize" / "export")
    lineage = quantize.data.tags  # the quantized export's run names the SFT run, its data and the recipe
    assert lineage["lineage.sft_run"] == sft.info.run_id and lineage["model.path"] == sft_export
    assert json.loads(lineage["lineage.data"]) == ["data/demo/arithmetic.jsonl", "data/demo/facts.jsonl"]
    assert lineage["lineage.recipe"] == str(root / "sensitivity" / "result" / "report")
    assert lineage["lineage.sensitivity_run"] == children["sensitivity"].info.run_id
    assert lineage["export_uri"] == export and quantize.data.params["quant.recipe"] == lineage["lineage.recipe"]
    assert evaluate.data.params["eval.compare_to"] == sft_export and evaluate.data.tags["model.path"] == export
    assert evaluate.data.tags["lineage.quantize_run"] == quantize.info.run_id
    assert tags["lineage.sft_run"] == sft.info.run_id and tags["pipeline.export_uri"] == export
    result = json.loads((root / "result" / "result.json").read_text())
    assert result["export"] == export and result["stages"]["sft"] == sft.info.run_id
    ratio = parent.data.metrics["eval.perplexity_ratio"]  # the evaluate job's summary (6 decimals) on the parent
    assert ratio == pytest.approx(evaluate.data.metrics["perplexity_ratio"], abs=1e-6)

    gated_at = time.time()
    strict = run_cli([*args, f"pipeline.gate.max_perplexity_ratio={ratio / 2}"], runs, env=ray_head.env)
    assert strict.returncode == 3, strict.stdout[-3000:] + strict.stderr[-3000:]
    line = strict.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: gate failed: perplexity_ratio {ratio:.6g} > {ratio / 2:g}"), line
    assert line.endswith(f"the export stays a candidate, not published: {export}")
    failed = client.get_run(run_id_of(strict.stdout))
    assert failed.info.status == "FAILED" and failed.data.tags["pipeline.gate"] == "failed"
    assert failed.data.tags["pipeline.candidate_uri"] == export and not _children(client, failed.info.run_id)
    assert storage.is_published(export) and not (root / "result").exists()
    print(f"pipeline e2e: until SFT done {killed_at - began:.0f} s, resumed run {gated_at - resumed_at:.0f} s, "
          f"gate run {time.time() - gated_at:.0f} s")
