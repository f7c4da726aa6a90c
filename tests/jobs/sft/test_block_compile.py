"""`trainer.compile=blocks` under ZeRO-3 with hooks per block: the compiled layers train to the eager run's losses.

In this process, on one gloo rank, qwen3_tiny with every parameter partitioned (each block gathered by its own hook
around the compiled forward, released after, gathered again for the compiled backward). The capture is torch.compile's
own (dynamo + AOTAutograd); the backend is aot_eager here: the same graphs without inductor's C++ codegen, which on CPU
costs more than the test can pay (the CUDA path compiles with inductor: benchmarks/sft.py rows).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.jobs.quantize_in_process import spec_of

pytestmark = pytest.mark.e2e  # DeepSpeed engines and graph capture (tests/conftest.py: the end-to-end lane)


@pytest.fixture(autouse=True)
def _one_process_group(one_gloo_rank):
    yield


def _losses(storage: Path, compiled: bool, *extra: str, steps: int = 3) -> tuple[list[float], int]:
    from core.data.sft import build_sft_data
    from core.models import MODELS
    from jobs.sft.batches import BatchPlan
    from jobs.sft.block_compile import compile_blocks
    from jobs.sft.deepspeed_config import build_ds_config
    from jobs.sft.worker import WorkerEnv, build_engine, build_for_training, train_step

    spec = spec_of(["job=sft", "model=qwen3_tiny", "data.max_length=128", "data.pack_max_length=128",
                    "trainer.micro_batch_size=2", "trainer.num_workers=1", "trainer.zero.granularity=block",
                    "trainer.zero.param_persistence_threshold=0", "model.zero_init=on",
                    f"trainer.max_steps={steps}", *extra], storage)
    source = MODELS.get(spec.model.name)
    rows = build_sft_data(spec.data, source.tokenizer(spec.model), None).rows
    ds_config = build_ds_config(spec.trainer, bf16=False)
    torch.manual_seed(0)
    model, _, tokenizer = build_for_training(spec, ds_config, torch.float32)
    blocks = compile_blocks(model, backend="aot_eager") if compiled else model.config.num_hidden_layers
    engine, _ = build_engine(spec, model, ds_config, torch.device("cpu"))
    env = WorkerEnv(0, 1, torch.device("cpu"))
    plan = BatchPlan(rows, 2, 1, 1, 0, spec.data.seed, pad_id=tokenizer.pad_token_id or 0)
    losses = [train_step(engine, plan.step(step), env)[0] for step in range(1, steps + 1)]
    engine.destroy()
    return losses, blocks


@pytest.mark.parametrize("recompute", ["false", "true"])  # true: torch's checkpoint inside the compiled layer
def test_compiled_blocks_train_like_eager_ones(tmp_path: Path, recompute: str) -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    extra = f"trainer.activation_checkpointing={recompute}"
    eager, layers = _losses(tmp_path / "eager", False, extra, steps=2)
    compiled, blocks = _losses(tmp_path / "compiled", True, extra, steps=2)
    assert blocks == layers  # every decoder layer
    # whole layers captured, shared by all of them (not one graph per layer): shapes and masks recompile a few
    assert 1 <= counters["stats"]["unique_graphs"] < layers + 3 and not counters["graph_break"], dict(counters)
    assert compiled == pytest.approx(eager, rel=1e-5)
    assert eager[-1] < eager[0]  # it trained: the compared losses moved
