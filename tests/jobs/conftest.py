"""Quantize runs shared by the quantize and evaluate tests: tiny Qwen3 (4 blocks, hidden 256), 8 x 64
calibration tokens, one MLflow store per session, each job run once through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli
from tests.jobs.vlm_shapes import llava_shapes  # noqa: F401  (a trained llava_tiny export, shared by the session)

TINY_QUANT = [
    "job=quantize", "+model.overrides.num_hidden_layers=4", "+model.overrides.hidden_size=256",
    "+model.overrides.intermediate_size=512", "calib.num_samples=8", "calib.seq_len=64", "quant.batch_size=2",
    "cluster.include_dashboard=false",
]
QUANT_ALGOS = {  # name -> overrides (AWQ on a coarse grid: the search is the slow part on CPU)
    "rtn": ["quant=rtn", "quant.format=w4g128", "quant.symmetric=false"],
    "awq": ["quant=awq", "quant.format=w4g64", "quant.options.n_grid=4", "+quant.options.clip_grid=4"],
    "gptq": ["quant=gptq", "quant.format=w3g128"],
    "smoothquant": ["quant=smoothquant", "quant.format=w8a8"],
}


@pytest.fixture(scope="session")
def quant_storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quantize") / "runs"


@pytest.fixture(scope="session")
def quantize_run(quant_storage: Path, ray_head):
    """name, extra overrides -> the finished CLI result (cached: each job runs once per session; attached to
    the session's Ray head)."""
    done: dict[str, object] = {}

    def run(name: str, *extra: str):
        if name not in done:
            result = run_cli([*TINY_QUANT, *extra, *ray_head.args, f"job.name={name}"], quant_storage,
                             env=ray_head.env)
            assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
            done[name] = result
        return done[name]

    return run


@pytest.fixture(scope="session")
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
