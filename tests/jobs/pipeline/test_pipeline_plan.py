"""job=pipeline's own logic, with stand-in stages (no Ray, no MLflow): the wiring of each stage's inputs, records,
skipping and resuming, settings that changed, a failing stage, the gate. The real stages: test_pipeline_e2e.py."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pytest

from core import storage
from core.errors import ConfigError
from core.tracking import RunHandle
from jobs.base import RunContext, StageResult
from jobs.pipeline.driver import PipelineJob, StageError
from jobs.pipeline.gate import GateError
from orchestrator.checks import check_spec
from orchestrator.compose import compose, to_spec

SECTIONS = {"sft": ("model", "data", "trainer"), "sensitivity": ("model", "search", "calib"),
            "quantize": ("model", "quant", "calib"), "evaluate": ("model", "eval")}
METRICS = {"perplexity": 12.0, "perplexity_ratio": 1.02, "kl_mean": 0.01, "top1_agreement": 0.97}


class FakeStages:
    """Records each stage's spec; publishes the outputs a real stage would (exports with COMPLETE, a report)."""

    def __init__(self, tmp: Path, fail: str | None = None) -> None:
        self.tmp, self.fail, self.calls = tmp, fail, []

    def sections(self, kind: str) -> tuple[str, ...]:
        return SECTIONS[kind]

    def cluster(self, spec: Any) -> AbstractContextManager[None]:
        self.calls.append(("cluster",))
        return nullcontext()

    def run(self, spec: Any) -> StageResult:
        kind = spec.job.kind
        self.calls.append((kind, spec.model.path, spec.quant.recipe, spec.eval.compare_to, spec.job.parent_run))
        if kind == self.fail:
            raise ConfigError("quant.format", "w5g100: not a format")
        job_uri = storage.join(spec.job.storage, spec.job.name)
        summary: dict[str, Any] = {}
        if kind in ("sft", "quantize"):
            staged = storage.staging_dir(storage.join(job_uri, "export"))
            (staged / "model.safetensors").write_text(kind)
            summary["export"] = storage.publish_dir(staged, storage.join(job_uri, "export"))
        elif kind == "sensitivity":
            report = self.tmp / "report-scratch"
            report.mkdir(exist_ok=True)
            (report / "report.json").write_text(json.dumps({"choices": {}}))
            summary["report"] = str(report)
        else:
            summary = dict(METRICS)
        return StageResult(run_id=f"run-{kind}-{len(self.calls) - 1}", summary=summary)


def _spec(*overrides: str) -> Any:
    return to_spec(compose(["job=pipeline", "job.name=p", *overrides]))


def _run(tmp: Path, spec: Any, stages: FakeStages) -> dict:
    root = tmp / "runs" / "p"
    ctx = RunContext(run=RunHandle("", ""), job_dir=root, job_uri=str(root), stages=stages)
    job = PipelineJob()
    job.prepare(spec, ctx)
    return job.run(spec, ctx, None)


def test_stages_get_their_inputs_from_the_stages_before(tmp_path: Path) -> None:
    stages = FakeStages(tmp_path)
    summary = _run(tmp_path, _spec(), stages)
    root = tmp_path / "runs" / "p"
    sft, quantized = str(root / "sft" / "export"), str(root / "quantize" / "export")
    recipe = str(root / "sensitivity" / "result" / "report")
    assert stages.calls == [("cluster",), ("sft", None, None, None, None),
                            ("sensitivity", sft, None, None, "run-sft-1"),
                            ("quantize", sft, recipe, None, "run-sensitivity-2"),
                            ("evaluate", quantized, None, sft, "run-quantize-3")]
    assert (root / "sensitivity" / "result" / "report" / "report.json").is_file()  # kept with the record
    assert summary["export"] == quantized and summary["stages"].count("ran") == 4
    result = json.loads((root / "result" / "result.json").read_text())
    assert storage.is_published(root / "result") and result["export"] == quantized
    assert result["lineage"]["lineage.sft_run"] == "run-sft-1"
    assert result["lineage"]["lineage.recipe"] == recipe and "data/demo" in result["lineage"]["lineage.data"]


def test_a_rerun_skips_finished_stages_and_redoes_what_follows_a_rerun_stage(tmp_path: Path) -> None:
    _run(tmp_path, _spec(), FakeStages(tmp_path))
    again = FakeStages(tmp_path)
    summary = _run(tmp_path, _spec(), again)
    assert again.calls == []  # nothing to run: no cluster either
    assert summary["stages"] == "sft skipped, sensitivity skipped, quantize skipped, evaluate skipped"
    root = tmp_path / "runs" / "p"
    storage.remove(root / "quantize" / "result")  # as if killed after quantize's export, before its record
    (root / "evaluate" / "leftover").mkdir()
    resumed = FakeStages(tmp_path)
    _run(tmp_path, _spec(), resumed)
    assert [c[0] for c in resumed.calls] == ["cluster", "quantize", "evaluate"]
    assert resumed.calls[1][4] == "run-sensitivity-2"  # the skipped stage's run is still the lineage
    assert not (root / "evaluate" / "leftover").exists()  # what followed the rerun stage was cleared first


def test_a_finished_stage_with_other_settings_is_refused(tmp_path: Path) -> None:
    _run(tmp_path, _spec(), FakeStages(tmp_path))
    with pytest.raises(ConfigError, match=r"trainer.max_steps: stage sft of this pipeline finished with "
                                          r"trainer.max_steps=20 \(now 40\)"):
        _run(tmp_path, _spec("trainer.max_steps=40"), FakeStages(tmp_path))
    summary = _run(tmp_path, _spec("pipeline.gate.max_kl_mean=0.5"), FakeStages(tmp_path))  # the gate is no stage's
    assert summary["gate"].startswith("passed: kl_mean 0.01 <= 0.5")


def test_a_failing_stage_fails_the_pipeline_with_its_line_and_records_nothing(tmp_path: Path) -> None:
    stages = FakeStages(tmp_path, fail="quantize")
    with pytest.raises(StageError) as err:
        _run(tmp_path, _spec(), stages)
    assert str(err.value) == "stage quantize: config error: quant.format: w5g100: not a format"
    assert err.value.exit_code == 2
    root = tmp_path / "runs" / "p"
    assert storage.is_published(root / "sensitivity" / "result") and not (root / "quantize" / "result").exists()


def test_the_gate_publishes_or_keeps_a_candidate(tmp_path: Path) -> None:
    spec = _spec("pipeline.gate.max_kl_mean=0.005", "pipeline.gate.min_top1_agreement=0.9")
    with pytest.raises(GateError) as err:
        _run(tmp_path, spec, FakeStages(tmp_path))
    root = tmp_path / "runs" / "p"
    assert err.value.exit_code == 3
    assert str(err.value) == ("gate failed: kl_mean 0.01 > 0.005 (pipeline.gate.max_kl_mean); top1_agreement 0.97 "
                              f">= 0.9; the export stays a candidate, not published: {root / 'quantize' / 'export'}")
    assert storage.is_published(root / "quantize" / "export") and not (root / "result").exists()
    with pytest.raises(ConfigError, match="pipeline.gate.checks.1: the evaluate stage reported no 'kl_p50'"):
        _run(tmp_path, _spec('pipeline.gate.checks=["top1_agreement >= 0.5", "kl_p50<=1"]'), FakeStages(tmp_path))
    summary = _run(tmp_path, _spec("pipeline.gate.max_perplexity_ratio=1.05"), FakeStages(tmp_path))
    assert summary["gate"] == "passed: perplexity_ratio 1.02 <= 1.05" and storage.is_published(root / "result")


@pytest.mark.parametrize("overrides, field", [
    (["pipeline.stages=[quantize,sft]"], "pipeline.stages"),
    (["pipeline.stages=[sft,sft]"], "pipeline.stages"),
    (["pipeline.stages=[sft,train]"], "pipeline.stages"),
    (["pipeline.stages=[]"], "pipeline.stages"),
    (["pipeline.stages=[sft,quantize]", "pipeline.gate.max_kl_mean=0.1"], "pipeline.gate"),
    (['pipeline.gate.checks=["kl_mean < 0.1"]'], "pipeline.gate.checks.0"),
    (["quant.format=w5g100"], "quant.format"),  # a stage's own check, before anything runs
    (["trainer.max_steps=0"], "trainer.max_steps"),
])
def test_bad_pipeline_specs_fail_before_anything_runs(overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_spec(_spec(*overrides))
    assert err.value.field == field


def test_a_signal_between_stages_stops_before_the_next_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    from core import interrupt
    from jobs.pipeline import records

    write = records.write

    def write_then_signal(root: str, kind: str, *args: Any) -> None:
        write(root, kind, *args)
        if kind == "sft":
            interrupt._handle(signal.SIGTERM, None)  # while the pipeline records: it goes on to the next check

    monkeypatch.setattr(records, "write", write_then_signal)
    monkeypatch.setattr(interrupt, "_requested", None)
    stages = FakeStages(tmp_path)
    with pytest.raises(interrupt.Interrupted, match="SIGTERM"):
        _run(tmp_path, _spec(), stages)
    assert [c[0] for c in stages.calls] == ["cluster", "sft"]  # recorded, and nothing started after it
    assert storage.is_published(tmp_path / "runs" / "p" / "sft" / "result")
