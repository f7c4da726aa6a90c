"""VLM SFT end to end: llava_tiny on image+caption chats mixed with text chats, 2 DeepSpeed ZeRO-3 workers over
gloo, real Ray and MLflow. The trained export (tests/jobs/vlm_shapes.py) is scored by eval=caption in
tests/jobs/evaluate/test_caption_eval.py."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoProcessor

from core.data.config import DataConfig, DatasetSpec
from core.data.sft import build_sft_data
from core.models import MODELS, ModelConfig
from jobs.sft.batches import BatchPlan
from tests.conftest import REPO, mlflow_run, run_cli
from tests.jobs.vlm_shapes import SHAPES_MODEL, SHAPES_STEPS


def test_vlm_sft_trains_and_is_tracked(llava_shapes) -> None:
    losses = {e["step"]: e["loss"] for e in llava_shapes.losses}
    assert len(losses) == SHAPES_STEPS and losses[SHAPES_STEPS] < 0.2 < 3.0 < losses[1], losses  # 0.072, 5.5
    run = mlflow_run(llava_shapes.storage, llava_shapes.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["data.stats.images"] == "480" and params["data.stats.samples_shapes"] == "480"
    assert params["data.stats.samples_facts"] == "75"  # 300 text chats at sample_ratio 0.25
    processor = AutoProcessor.from_pretrained(llava_shapes.export)  # the export carries the image processor
    assert processor.image_token == "<image>" and processor.image_processor.crop_size["height"] == 64


MIX = [DatasetSpec(path="data/shapes/train.jsonl", format="mm_chat_jsonl", sample_ratio=0.02),  # 10 samples
       DatasetSpec(path="data/demo/facts.jsonl", sample_ratio=0.05)]  # 15 text chats
STEPS = 3


def _filler_steps() -> list[list[bool]]:
    """Per step, per rank: does the rank's micro-batch need the image filler (a text-only row)?"""
    data = DataConfig(datasets=[DatasetSpec(path=str(REPO / d.path), format=d.format, sample_ratio=d.sample_ratio)
                                for d in MIX], max_length=256, packing=False)
    source, cfg = MODELS.get("llava_tiny"), ModelConfig(name="llava_tiny")
    rows = build_sft_data(data, source.tokenizer(cfg), source.processor(cfg)).rows
    plans = [BatchPlan(rows, 1, 1, 2, rank, seed=0, pad_id=0) for rank in (0, 1)]
    return [[p.step(step)[0].input_ids.shape[0] == 2 for p in plans] for step in range(1, STEPS + 1)]


def test_text_only_micro_batch_beside_an_image_one(tmp_path: Path, ray_head) -> None:
    """Unpacked rows: at some step one rank holds a text chat while the other holds an image. Without the
    filler row only one rank would run the vision tower and ZeRO-3's gathers would wait forever."""
    assert [False, True] in [sorted(f) for f in _filler_steps()], "no mixed step: the run would prove nothing"
    datasets = ", ".join(f"{{path: {d.path}, format: {d.format}, sample_ratio: {d.sample_ratio}}}" for d in MIX)
    storage = tmp_path / "runs"
    result = run_cli([*SHAPES_MODEL, f"data.datasets=[{datasets}]", "data.packing=false", "data.max_length=256",
                      "trainer.num_workers=2", "trainer.micro_batch_size=1", f"trainer.max_steps={STEPS}",
                      "trainer.zero.param_persistence_threshold=0", "trainer.checkpoint.export=false",
                      "job.name=mixed", *ray_head.args], storage, timeout=600, env=ray_head.env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((storage / "mixed" / "summary.json").read_text())
    assert [e["step"] for e in summary["losses"]] == list(range(1, STEPS + 1))
