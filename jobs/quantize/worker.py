"""A calibration worker (Ray actor): holds the full model on CPU and its shard of calibration batches,
moves one block at a time to its device, observes, applies the reduced-stats quantization, and pushes
its shard through the quantized block to get the next block's inputs. Activations never leave it."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.models import MODELS
from jobs.quantize import checkpoint
from jobs.quantize.algorithms import ALGORITHMS
from jobs.quantize.algorithms.stats import Stats
from jobs.quantize.layerwise import Layerwise
from kernels.quant import parse_format


def build_fp_model(spec: Any) -> Any:
    """The FP32 model on CPU; seeded so random-init models are identical in every process."""
    source = MODELS.get(spec.model.name)
    torch.manual_seed(spec.quant.seed)
    model = source.build(spec.model, source.hf_config(spec.model), torch.float32).eval()
    model.config.use_cache = False
    return model


def result_digest(result: Any) -> str:
    """What every data-parallel worker must agree on: the integers, scales and zeros it produced."""
    h = hashlib.sha256()
    for name in sorted(result.layers):
        layer = result.layers[name]
        for t in (layer.qweight, layer.scale, layer.zero):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class CalibWorker:
    def __init__(self, spec: Any, rank: int, batches: list[np.ndarray], use_gpu: bool) -> None:
        torch.set_num_threads(spec.quant.threads_per_worker)
        self.spec, self.rank, self.ids = spec, rank, batches
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.fmt = parse_format(spec.quant.format, spec.quant.symmetric)
        self.lw = Layerwise(build_fp_model(spec))
        self.inputs: list[torch.Tensor] = []

    def start(self, resume_dir: str | None) -> int:
        """Inputs of the first block to do: embeddings, or the shard saved by the last finished block."""
        if resume_dir:
            self.inputs = checkpoint.load_inputs(Path(resume_dir) / f"inputs_rank{self.rank}.safetensors")
        else:
            self.inputs = [self.lw.embed(torch.tensor(b)) for b in self.ids]
        return sum(x.shape[0] for x in self.inputs)

    def begin_block(self, index: int) -> None:
        self.index = index
        self.block = self.lw.blocks[index].to(self.device)
        self.fp_block = copy.deepcopy(self.block)  # for the block's output error after quantization
        self.algo = ALGORITHMS.get(self.spec.quant.algorithm)(dict(self.spec.quant.options))
        self.algo.prepare(self.block, self.fmt, self.lw.run_block)

    def observe(self, pass_idx: int, prior: Stats) -> Stats:
        local = Stats()
        with torch.no_grad():
            for x in self.inputs:
                self.algo.observe(self.block, x.to(self.device), local, pass_idx=pass_idx, prior=prior)
        return local.to("cpu")

    @torch.no_grad()
    def apply(self, stats: Stats, staged_dir: str) -> dict[str, Any]:
        """Quantize (same deterministic result on every worker), propagate the shard, save its inputs."""
        result = self.algo.apply(self.block, stats)
        sse = update = 0.0
        outputs = []
        for x in self.inputs:
            xd = x.to(self.device)
            y_ref = self.lw.run_block(self.fp_block, xd).float()
            y = self.lw.run_block(self.block, xd)
            sse += (y.float() - y_ref).square().sum().item()
            update += (y_ref - xd.float()).square().sum().item()
            outputs.append(y.cpu())
        self.inputs = outputs
        checkpoint.save_inputs(Path(staged_dir) / f"inputs_rank{self.rank}.safetensors", outputs)
        self.lw.blocks[self.index] = self.block.to("cpu")
        del self.fp_block
        out: dict[str, Any] = {"digest": result_digest(result), "sse": sse, "update": update,
                               "count": sum(y.numel() for y in outputs)}
        if self.rank == 0:
            out["result"] = _to_cpu(result)
            out["state"] = {k: v.cpu() for k, v in self.block.state_dict().items()}
        return out


def _to_cpu(result: Any) -> Any:
    for layer in result.layers.values():
        layer.qweight, layer.scale, layer.zero = layer.qweight.cpu(), layer.scale.cpu(), layer.zero.cpu()
    result.smoothing = {k: v.cpu() for k, v in result.smoothing.items()}
    return result
