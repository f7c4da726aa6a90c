"""The family matrix: every model family users bring, as a tiny random-init model directory (family_models.py, built
from its transformers config, nothing downloaded), through every job kind's own code, in this process.

Per family: `job=inspect` and `model.freeze` through the CLI entry point (no Ray there); 2 SFT steps with the SFT
worker's own build, DeepSpeed ZeRO-3 engine and step (one gloo rank; the Ray Train path is the SFT end-to-end
tests'); quantize with each applicable algorithm at w4g32 and w8a8 (MBQ on the VLMs) with the calibration worker's
own code and the job's export, each export reloaded with the project's loader; the sensitivity worker's scores
with two candidates; evaluate's perplexity of each export. Ray is left out of the cells: each job's worker code is
what runs (its Ray plumbing is the end-to-end tests' business), so the matrix costs seconds per family.
Qwen3-VL, InternVL and Mistral3 have no processor here (family_models.NO_CPU_PROCESSOR): their SFT cell trains on text
chats and their MBQ cell calibrates on image rows made by hand (family_models.image_rows).

The w4g128 and w8a8 exports are also read by plain transformers + compressed-tensors in a separate process
(tests/jobs/interop.py: tolerances, and what transformers cannot load).
Tolerances: a reloaded export's logits equal the calibrated in-memory model's (fake quant) to 1e-4 relative (float32,
the same dequantized weights); against the FP model they are within 0.5 relative (random 2-layer models at 4 bits:
0.04-0.25 seen), and w8a8 within 0.15.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from core.models import MODELS, build_model
from tests.jobs.family_models import (
    MOE_FAMILIES,
    NO_CPU_PROCESSOR,
    TINY_FAMILIES,
    VLM_FAMILIES,
    saved_families,
)
from tests.jobs.interop import PlainTransformers, assert_serves, write_reference
from tests.jobs.quantize_in_process import CALIB_TEXT, calibrate, spec_of

pytestmark = pytest.mark.e2e  # (tests/conftest.py: the end-to-end lane)

W4, W8A8 = "w4g32", "w8a8"
ALGORITHMS = [("rtn", W4), ("rtn", "w4g128"), ("gptq", W4), ("awq", W4), ("gptq", W8A8), ("smoothquant", W8A8)]
VLM_ALGORITHMS = [("mbq", W4)]
SERVED = {("rtn", "w4g128"), ("gptq", W8A8)}  # also read by plain transformers + compressed-tensors (interop.py)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return saved_families(tmp_path_factory.mktemp("families"))


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlainTransformers]:
    process = PlainTransformers(tmp_path_factory.mktemp("plain"))
    yield process
    process.close()


@pytest.fixture(scope="module", autouse=True)
def _one_process_group(one_gloo_rank):
    """One gloo rank for the DeepSpeed engines (tests/jobs/conftest.py)."""


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def inspect_and_freeze(name: str, path: Path, storage: Path, cli: Any) -> None:
    model = ["model=hf", f"model.path={path}", "tracking.enabled=false"]
    result = cli(["job=inspect", *model], storage)
    assert result.returncode == 0 and "language" in result.stdout, result.stdout + result.stderr
    groups = ["experts", "routers"] if name in MOE_FAMILIES else ["vision" if name in VLM_FAMILIES else "embeddings"]
    for group in groups:
        frozen = cli(["job=inspect", *model, f"model.freeze=[{group}]"], storage)
        assert frozen.returncode == 0, frozen.stdout + frozen.stderr
        assert "trainable" in frozen.stdout and frozen.stdout != result.stdout
        assert re.search(rf"\b{group}\b", result.stdout), result.stdout  # the group is listed


def sft_two_steps(name: str, path: Path, storage: Path, *overrides: str) -> list[float]:
    from core.data.sft import build_sft_data
    from jobs.sft.batches import BatchPlan
    from jobs.sft.deepspeed_config import build_ds_config
    from jobs.sft.worker import WorkerEnv, build_engine, build_for_training, train_step

    data = ["data=mm_demo"] if name in VLM_FAMILIES else []
    spec = spec_of(["job=sft", "model=hf", f"model.path={path}", *data, "data.max_length=256",
                  "data.pack_max_length=256", "trainer.micro_batch_size=1", "trainer.num_workers=1",
                  "trainer.zero.param_persistence_threshold=0", "trainer.max_steps=2", *overrides], storage)
    source = MODELS.get("hf")
    processor = None if name in NO_CPU_PROCESSOR else source.processor(spec.model)
    rows = build_sft_data(spec.data, source.tokenizer(spec.model), processor).rows
    ds_config = build_ds_config(spec.trainer, bf16=False)
    model, _, tokenizer = build_for_training(spec, ds_config, torch.float32)
    engine, _ = build_engine(spec, model, ds_config, torch.device("cpu"))
    env = WorkerEnv(0, 1, torch.device("cpu"))
    plan = BatchPlan(rows, 1, spec.trainer.grad_accum, 1, 0, spec.data.seed, pad_id=tokenizer.pad_token_id or 0)
    losses = [train_step(engine, plan.step(step), env)[0] for step in (1, 2)]
    engine.destroy()
    return losses


QUANT_SUFFIXES = (".weight_packed", ".weight_scale", ".weight_shape", ".weight_zero_point")


def _assert_names_as_on_disk(fp_dir: Path, export: Path) -> None:
    """The export's tensors are the FP checkpoint's on-disk names (Mixtral's block_sparse_moe.experts.N.w1, every
    MoE expert's own Linears), each quantized weight replaced by its quantization tensors."""
    from safetensors import safe_open

    def keys(path: Path) -> set[str]:
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            return set(f.keys())

    exported = keys(export)
    quantized = {k[: -len(".weight_scale")] for k in exported if k.endswith(".weight_scale")}
    plain = {k for k in exported if not k.endswith(QUANT_SUFFIXES)}
    assert quantized and plain | {f"{q}.weight" for q in quantized} == keys(fp_dir)


def sensitivity_scores(path: Path, storage: Path) -> dict[str, dict[str, float]]:
    from core.blocks.layerwise import Layerwise
    from core.data.calib_mm import model_calibration_rows
    from jobs.sensitivity.worker import ScoringWorker

    spec = spec_of(["job=sensitivity", "model=hf", f"model.path={path}", *CALIB_TEXT,
                  "search.candidates=[w4g32,w8a8]", "search.batch_size=2"], storage)
    worker = ScoringWorker(spec, False, "float32")
    lw = Layerwise(worker.model)
    names = [f"{lw.block_prefix(i)}{n}" for i, block in enumerate(lw.blocks)
             for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
    rows = model_calibration_rows(spec.calib, MODELS.get("hf"), spec.model)
    return worker.score(rows.batches(2), names)["scores"]


@pytest.mark.parametrize("name", TINY_FAMILIES + NO_CPU_PROCESSOR)
def test_family(name: str, family_dirs: dict[str, Path], tmp_path: Path, cli_in_process: Any,
                plain: PlainTransformers) -> None:
    from core.models import ModelConfig
    from jobs.evaluate.perplexity import load_model, perplexity
    from jobs.sft.zero_hooks import block_classes

    path, storage = family_dirs[name], tmp_path / "runs"
    inspect_and_freeze(name, path, storage, cli_in_process)

    # DeepSpeed's hooks on every module; NO_CPU_PROCESSOR: text chats through the language model
    losses = sft_two_steps(name, path, storage, "trainer.zero.granularity=module")
    assert all(math.isfinite(loss) for loss in losses), losses
    # ZeRO-3's hooks per block (every parameter partitioned: each block gathered whole), the model built under
    # zero.Init as large models are (where DeepSpeed's Linear wrapper would be installed): the same losses
    block = sft_two_steps(name, path, storage, "trainer.zero.granularity=block", "model.zero_init=on")
    assert block == pytest.approx(losses, rel=1e-6)

    fp = build_model(ModelConfig(name="hf", path=str(path)), torch.float32).eval()
    assert block_classes(fp), name  # the block check above hooked the decoder layers, not nothing
    ids = torch.randint(3, 250, (2, 24), generator=torch.Generator().manual_seed(0))
    reference = _logits(fp, ids)
    fp_ppl = perplexity(load_model("hf", str(path), {}), ids.numpy(), 2)["perplexity"]
    for algorithm, fmt in ALGORITHMS + (VLM_ALGORITHMS if name in VLM_FAMILIES + NO_CPU_PROCESSOR else []):
        out = calibrate(name, path, algorithm, fmt, storage)
        # gpt-oss's BF16 checkpoints keep its experts fused, its export names each expert's Linears
        if name != "gpt_oss":
            _assert_names_as_on_disk(path, out["export"])
        if (algorithm, fmt) in SERVED:
            ours = write_reference(out["export"], ids, tmp_path / f"{algorithm}-{fmt}.safetensors")
            assert_serves(plain.check(out["export"], ours), out["export"], name)
        got = _logits(out["reloaded"], ids)
        assert _rel(got, _logits(out["in_memory"], ids)) < 1e-4, (algorithm, fmt)
        assert _rel(got, reference) < (0.15 if fmt == W8A8 else 0.5), (algorithm, fmt, _rel(got, reference))
        assert all(math.isfinite(m["block_rel_err"]) for m in out["metrics"])
        ppl = perplexity(load_model("hf", str(out["export"]), {}), ids.numpy(), 2)["perplexity"]  # job=evaluate's
        assert math.isfinite(ppl) and abs(math.log(ppl / fp_ppl)) < 0.5, (algorithm, fmt, ppl, fp_ppl)

    scores = sensitivity_scores(path, storage)
    assert scores and all(math.isfinite(v) and v >= 0 for s in scores.values() for v in s.values())
    assert sum(s["w4g32"] for s in scores.values()) > 0
