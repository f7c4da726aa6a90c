"""Quantize runs shared by the quantize and evaluate tests: tiny Qwen3 (4 blocks, hidden 256), 8 x 64
calibration tokens, one MLflow store per session, each job run once through the real CLI."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor, wait
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


class QuantizeRuns:
    """name, extra overrides -> the finished CLI result; each job runs once per session, attached to the session's
    Ray head. `start` launches jobs in the background, two at a time: one job leaves the 2 cores half idle
    (imports, actor start-up), so two side by side took 33 s where one after the other took 55 s. The session's
    first job runs alone: it creates the MLflow store and experiment the others write to."""

    def __init__(self, storage: Path, head) -> None:
        self.storage, self.head = storage, head
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.jobs: dict[str, Future] = {}

    def start(self, name: str, *extra: str) -> None:
        if name not in self.jobs:
            first = next(iter(self.jobs.values()), None)
            self.jobs[name] = self.pool.submit(self._run, first, name, extra)

    def _run(self, first: Future | None, name: str, extra: tuple[str, ...]):
        if first is not None:
            wait([first])
        return run_cli([*TINY_QUANT, *extra, *self.head.args, f"job.name={name}"], self.storage, env=self.head.env)

    def wait_all(self) -> None:
        wait(list(self.jobs.values()))

    def __call__(self, name: str, *extra: str):
        self.start(name, *extra)
        result = self.jobs[name].result()
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        return result


@pytest.fixture(scope="session")
def quantize_run(quant_storage: Path, ray_head):
    runs = QuantizeRuns(quant_storage, ray_head)
    yield runs
    runs.pool.shutdown(cancel_futures=True)


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


@pytest.fixture(scope="session")
def one_gloo_rank():
    """One gloo process group of one rank for the session (the SFT worker's DeepSpeed engine run in this process):
    DeepSpeed keeps the first group it sees, so a group destroyed and created again breaks a later module's
    engines ("Group ... is not registered")."""
    import os
    import socket

    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
