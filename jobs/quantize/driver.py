"""Quantize driver (orchestrator process): validates everything before Ray starts, then walks the decoder
blocks one at a time over data-parallel calibration actors, checkpoints each block, and exports."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from core.cluster import wants_gpu
from core.data.calib import token_blocks
from core.errors import ConfigError
from core.models import MODELS
from jobs.base import RunContext
from jobs.quantize import checkpoint
from jobs.quantize.algorithms import ALGORITHMS
from jobs.quantize.algorithms.base import build_config
from jobs.quantize.load import is_ignored
from kernels.quant import QuantFormat, check_group_size, parse_format

log = logging.getLogger("jobs.quantize")


@dataclass
class Prepared:
    fmt: QuantFormat
    batches: list[np.ndarray]  # calibration token ids, [batch_size, seq_len] each
    num_blocks: int
    done: int  # blocks finished by an earlier attempt of this job


def _check_quant(q: Any) -> QuantFormat:
    algo_cls = ALGORITHMS.get(q.algorithm)
    build_config(algo_cls.Config, dict(q.options), "quant.options")
    for name in ("num_workers", "batch_size", "threads_per_worker"):
        if getattr(q, name) < 1:
            raise ConfigError(f"quant.{name}", f"must be >= 1 (got {getattr(q, name)})")
    if q.resume not in ("auto", "never"):
        raise ConfigError("quant.resume", f"must be auto or never (got {q.resume!r})")
    if str(q.use_gpu).lower() not in ("auto", "true", "false"):
        raise ConfigError("quant.use_gpu", "must be one of auto, true, false")
    return parse_format(q.format, q.symmetric)


def _check_model(spec: Any, fmt: QuantFormat) -> tuple[Any, int]:
    """Group sizes against every block Linear, on a meta-device model (no weights, no memory)."""
    import torch

    from jobs.quantize.layerwise import Layerwise, block_linears_in_features

    source = MODELS.get(spec.model.name)
    source.validate(spec.model)
    hf_config = source.hf_config(spec.model)
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # the architecture alone: from_config, never from_pretrained, on meta
        model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=spec.model.trust_remote_code)
    linears = block_linears_in_features(model)
    for name, in_features in linears.items():
        check_group_size(fmt, name, in_features)
        if is_ignored(name, list(spec.quant.ignore)):
            raise ConfigError("quant.ignore", f"{name} is inside a decoder block; ignoring block Linears is not "
                              "supported yet (only modules outside the blocks, e.g. lm_head)")
    return hf_config, len(Layerwise(model).blocks)


def _split(ids: np.ndarray, batch_size: int, workers: int) -> list[list[np.ndarray]]:
    """Batches first, then contiguous runs of batches per worker: every worker count sees the same batches,
    so forwards (and their float rounding) do not depend on it."""
    batches = [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]
    return [[batches[k] for k in part] for part in np.array_split(np.arange(len(batches)), workers)]


class QuantizeJob:
    sections = ("model", "quant", "calib")

    def prepare(self, spec: Any, ctx: RunContext) -> Prepared:
        fmt = _check_quant(spec.quant)
        hf_config, num_blocks = _check_model(spec, fmt)
        c = spec.calib
        tokenizer = MODELS.get(spec.model.name).tokenizer(spec.model)
        ids = token_blocks(c.path, c.format, tokenizer, c.num_samples, c.seq_len, c.seed, c.text_field)
        if spec.quant.num_workers > -(-len(ids) // spec.quant.batch_size):
            raise ConfigError("quant.num_workers", f"{spec.quant.num_workers} workers but only "
                              f"{-(-len(ids) // spec.quant.batch_size)} calibration batches")
        manifest = {"spec_hash": checkpoint.spec_hash(spec), "model_hash": checkpoint.model_hash(hf_config),
                    "num_blocks": num_blocks}
        done = checkpoint.check_manifest(ctx.job_dir / "blocks", manifest, spec.quant.resume)
        if spec.job.parent_run:
            ctx.run.set_tags({"job.parent_run": spec.job.parent_run})
        ctx.run.log_params({"calib.tokens": int(ids.size), "quant.num_blocks": num_blocks})
        log.info("calibration: %d x %d tokens; %d blocks, %d already done", *ids.shape, num_blocks, done)
        return Prepared(fmt, list(ids), num_blocks, done)

    def run(self, spec: Any, ctx: RunContext, prepared: Prepared) -> dict[str, Any]:
        import ray

        from jobs.quantize.worker import CalibWorker

        q = spec.quant
        use_gpu = wants_gpu(q.use_gpu)
        actor = ray.remote(num_cpus=q.cpus_per_worker, num_gpus=1 if use_gpu else 0)(CalibWorker)
        ids = np.stack(prepared.batches)
        shards = _split(ids, q.batch_size, q.num_workers)
        workers = [actor.remote(spec, rank, shard, use_gpu) for rank, shard in enumerate(shards)]
        root = ctx.job_dir / "blocks"
        resume_dir = str(checkpoint.block_dir(root, prepared.done - 1)) if prepared.done else None
        ray.get([w.start.remote(resume_dir) for w in workers])
        if prepared.done:
            log.info("resuming at block %d of %d", prepared.done, prepared.num_blocks)
        n_passes = ALGORITHMS.get(q.algorithm).n_passes
        from jobs.quantize.blockloop import run_blocks

        history = run_blocks(workers, range(prepared.done, prepared.num_blocks), n_passes, root, ctx,
                             tqdm(total=prepared.num_blocks, initial=prepared.done, desc="quantize", unit="block"))
        for w in workers:
            ray.kill(w)
        summary: dict[str, Any] = {"job_dir": str(ctx.job_dir), "blocks": prepared.num_blocks,
                                   "resumed_at": prepared.done}
        if history:
            summary["last_block_rel_err"] = round(history[-1]["block_rel_err"], 6)
        if q.export:
            from jobs.quantize.blockloop import export

            summary["export"] = str(export(spec, prepared.fmt, root, ctx))
        return summary
