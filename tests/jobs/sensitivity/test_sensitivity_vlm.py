"""job=sensitivity on a VLM (llava_tiny, random init) through the real CLI, attached to the session's Ray head:
image+caption calibration (the caption loss back-propagated from the merged image+text embeddings) scores the
language model's block Linears only; the vision tower and projector are listed as kept in 16-bit, not dropped."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from core.models import MODELS, ModelConfig
from core.models.auto import meta_model
from core.quant.recipe import handle_members
from jobs.sensitivity.report import recompute_effective_bits
from tests.conftest import mlflow_run, run_cli, run_id_of


def test_vlm_language_model_scored_vision_listed(tmp_path: Path, ray_head) -> None:
    storage = tmp_path / "runs"
    result = run_cli(["job=sensitivity", "model=llava_tiny", "calib=image_caption", "calib.num_samples=8",
                      "search.batch_size=4", "search.candidates=[w4g128,w8,fp16]", "search.effective_bits=6",
                      "cluster.include_dashboard=false", "job.name=vlm-sens", *ray_head.args], storage,
                     env=ray_head.env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert mlflow_run(storage, run_id_of(result.stdout)).info.status == "FINISHED"
    report = storage / "vlm-sens" / "report"
    manifest = json.loads((report / "report.json").read_text())

    model = meta_model(MODELS.get("llava_tiny"), ModelConfig(name="llava_tiny"))
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    language = {n for n in linears if n.startswith("model.language_model.layers.")}
    vision = {n for n in linears if n.startswith(("model.vision_tower.", "model.multi_modal_projector."))}
    assert language and vision and linears == language | vision | {"lm_head"}
    scored = {m for h in manifest["handles"] for m in handle_members(h["name"])}
    assert scored == language
    excluded = manifest["header"]["excluded"]
    assert set(excluded) == vision | {"lm_head"}
    assert {excluded[n] for n in vision} == {"vision tower / projector: kept in 16-bit"}
    md = (report / "report.md").read_text()
    assert f"- **excluded (vision tower / projector: kept in 16-bit), {len(vision)}:**" in md
    for handle in manifest["handles"]:
        scores = {c: v["score"] for c, v in handle["candidates"].items()}
        assert all(math.isfinite(v) and v >= 0 for v in scores.values()), handle["name"]
        assert scores["fp16"] == 0.0 and scores["w4g128"] > scores["w8"], handle["name"]  # 4 bits hurt more
    headline = manifest["search"]["effective_bits"]
    assert headline <= 6.0
    for file in ("report.json", "report.csv", "report.md"):
        assert recompute_effective_bits(report / file) == pytest.approx(headline, abs=1e-9), file
