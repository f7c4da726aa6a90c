"""The SFT training loop; runs in every Ray Train worker (one per GPU, or N CPU workers)."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from core import interrupt, storage
from core.errors import ConfigError, NumericError, portable
from core.models import MODELS, build_model
from core.models.families import family_of
from core.models.freeze import apply_freeze
from core.models.inspect import describe, embedding_params
from core.tracking import RunHandle
from jobs.sft import checkpoint, sequence_parallel
from jobs.sft.batches import BatchPlan, causal_lm_loss
from jobs.sft.block_compile import compile_blocks
from jobs.sft.deepspeed_config import build_ds_config, hooks_per_block
from jobs.sft.export import gather_state_dict, write_export
from jobs.sft.metrics import Throughput, flops_per_token, memory_stats, peak_tflops
from jobs.sft.precision import apply_precision, fp8_token_multiple
from jobs.sft.profile import profiled
from jobs.sft.schedule import lr_multiplier
from jobs.sft.zero_hooks import hook_blocks
from kernels.fused import FusedOps, compiler_works, fuse_model, fused_ops

log = logging.getLogger("jobs.sft")


@dataclass
class WorkerEnv:
    rank: int
    world: int
    device: torch.device


def _worker_env() -> WorkerEnv:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    return WorkerEnv(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _zero_init_wanted(mode: str, stage: int, hf_config: Any) -> bool:
    if stage != 3 or mode == "off":
        return False
    if mode == "on":
        return True
    text = getattr(hf_config, "text_config", None) or hf_config
    approx_params = 12 * text.num_hidden_layers * text.hidden_size**2
    return approx_params > 1e9  # big enough that a full replica per worker hurts


def build_for_training(spec: Any, ds_config: dict, dtype: torch.dtype) -> tuple[Any, Any, Any]:
    source = MODELS.get(spec.model.name)
    hf_config = source.hf_config(spec.model)
    tokenizer = source.tokenizer(spec.model)
    if _zero_init_wanted(spec.model.zero_init, spec.trainer.zero.stage, hf_config):
        from transformers.integrations import HfDeepSpeedConfig

        ds_marker = HfDeepSpeedConfig(ds_config)  # makes transformers build/load under zero.Init
        model = build_model(spec.model, dtype, hf_config)
        del ds_marker  # must not outlive construction (rank-0-only model builds would hang)
    else:
        model = build_model(spec.model, dtype, hf_config)
    apply_freeze(model, list(spec.model.freeze))  # before the optimizer: it gets trainable parameters only
    if spec.trainer.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model, hf_config, tokenizer


def export_trained(spec: Any, engine: Any, tokenizer: Any, final: str, run: RunHandle, rank: int,
                   **options: Any) -> str | None:
    """Every rank (the gather is a collective); rank 0 writes and publishes the export and returns its URI. The
    metadata comes from the input model's config read again (training changed the built model's: dtype,
    use_cache); `options` go to write_export (tests: max_shard_size)."""
    state = gather_state_dict(engine)
    if rank != 0:
        return None
    source = MODELS.get(spec.model.name)
    return write_export(state, source.hf_config(spec.model), tokenizer, final, run,
                        saver=source.processor(spec.model),  # a VLM's processor saves both
                        log_exports=spec.tracking.log_exports, **options)


def _fuse_ops(model: Any, setting: str, env: WorkerEnv) -> FusedOps | None:
    """true: compiled fused ops (a broken toolchain fails the step); auto: the same on CUDA workers where
    torch.compile works, else off (on CPU inductor's C++ compile costs more than the fusion saves); liger: the
    same ops from Liger-Kernel. The ops installed, None when off."""
    wanted = str(setting).lower()
    if wanted == "false" or (wanted == "auto" and (env.device.type != "cuda" or not compiler_works(env.device))):
        return None
    family = family_of(model)
    ops = _liger_ops(env) if wanted == "liger" else fused_ops(compiled=True)
    counts = fuse_model(model, family.fused_ops if family else {}, ops)
    if env.rank == 0:
        print(f"fused ops: {', '.join(f'{n} x{c}' for n, c in sorted(counts.items())) or 'none'}", flush=True)
    return ops


def _liger_ops(env: WorkerEnv) -> FusedOps:
    """liger: Liger-Kernel's Triton ops (CUDA workers with liger-kernel installed)."""
    if env.device.type != "cuda":
        raise ConfigError("trainer.fused_ops", "liger runs Triton kernels on CUDA workers only, this worker has a CPU")
    try:
        from kernels.fused.liger import liger_ops

        return liger_ops()
    except ImportError:
        raise ConfigError("trainer.fused_ops", "liger needs liger-kernel on the workers: pip install '.[liger]' "
                                               "(pyproject pins the version)") from None


def _pad_to(t: Any, seq_len: int) -> int | None:
    """Rows padded to `seq_len` rounded up so that each rank's share of a row splits evenly (sequence parallel)
    and holds a multiple of fp8's GEMM alignment; None: to the longest row of each micro-batch."""
    multiple = fp8_token_multiple(t) * t.sequence_parallel
    return -(-seq_len // multiple) * multiple if multiple > 1 else None


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:  # the optimizer sees trainable parameters only
            ndim = len(getattr(param, "ds_shape", param.shape))  # under zero.Init the local shard is 1-D
            (no_decay if ndim < 2 or "norm" in name or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_engine(spec: Any, model: Any, ds_config: dict, device: torch.device) -> tuple[Any, Any]:
    import deepspeed

    o = spec.trainer.optim
    if hooks_per_block(spec.trainer.zero):
        blocks = hook_blocks(model)  # before initialize, which registers the hooks
        if dist.get_rank() == 0:
            print(f"ZeRO-3 hooks per block: {', '.join(c.__name__ for c in blocks) or 'none named'}", flush=True)
    optimizer = torch.optim.AdamW(_param_groups(model, o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2),
                                  eps=o.eps, fused=device.type == "cuda")
    multiplier = lr_multiplier(o, spec.trainer.max_steps)

    def make_scheduler(wrapped: Any) -> Any:  # bound to DeepSpeed's optimizer, whose groups it may regroup
        return torch.optim.lr_scheduler.LambdaLR(wrapped, multiplier)

    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=make_scheduler,
                                                   config=ds_config)
    return engine, scheduler


def _global_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def train_step(engine: Any, micro_batches: list, env: WorkerEnv, chunk_tokens: int = 0,
               cross_entropy: Callable | None = None) -> tuple[float, int, int]:
    """One optimizer step; returns (global mean loss per target token, global targets, global tokens).
    `cross_entropy`: the chunked loss's per-chunk loss (the fused ops'), None: eager."""
    local_targets = sum(b.targets for b in micro_batches)
    local_tokens = sum(b.tokens for b in micro_batches)
    global_targets, global_tokens = _global_sum([local_targets, local_tokens], env.device)
    # DeepSpeed averages over ranks and grad-accum steps; this divisor makes the gradient that of
    # sum(token losses) / all target tokens of the step, however tokens fall across micro-batches.
    divisor = global_targets / (env.world * len(micro_batches))
    loss_sum = 0.0
    for batch in micro_batches:
        batch = batch.to(env.device)
        loss = causal_lm_loss(engine, batch, divisor, chunk_tokens, cross_entropy)
        engine.backward(loss)
        engine.step()
        loss_sum += loss.item() * divisor
    (loss_sum,) = _global_sum([loss_sum], env.device)
    return loss_sum / global_targets, int(global_targets), int(global_tokens)


def _check_finite(step: int, loss: float, grad_norm: float) -> None:
    """Both are global (every rank raises at the same step). A non-finite gradient norm means DeepSpeed skipped the
    optimizer step: with no fp16 loss scaling to recover, every later step would be skipped too, silently."""
    for name, value in (("loss", loss), ("gradient norm", grad_norm)):
        if not math.isfinite(value):
            raise NumericError(f"step {step}", f"the {name} is {value} (learning rate too high, bad data or a "
                               "non-finite weight); checkpoints before this step are kept")


def _stop_asked(key: str, env: WorkerEnv) -> bool:
    """Rank 0 reads the driver's stop request (core.interrupt) and every rank gets its answer: all stop after the
    same step (a rank leaving alone would hang the others' collectives)."""
    flag = torch.tensor([float(env.rank == 0 and interrupt.seen(key))], device=env.device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _log_model(run: RunHandle, model: Any, env: WorkerEnv) -> dict[str, Any]:
    info = describe(model)
    if env.rank == 0:
        log.info("model %s: %s params, %s trainable", info["class"], f"{info['total_params']:,}",
                 f"{info['trainable_params']:,}")
        run.log_text(info["tree"], "model/tree.txt")
        run.log_dict({k: v for k, v in info.items() if k != "tree"}, "model/parameters.json")
        run.log_params({"model.total_params": info["total_params"], "model.trainable_params": info["trainable_params"]})
    return info


def _step_line(step: int, max_steps: int, m: dict[str, float]) -> str:
    mfu = f"{100 * m['mfu']:.1f}%" if "mfu" in m else "n/a"
    mem = " ".join(f"{k[4:-4]}={v:.2f}GiB" for k, v in m.items() if k.startswith("mem_"))  # mem_X_gib -> X
    return (f"step {step}/{max_steps} loss={m['loss']:.4f} lr={m['lr']:.3e} grad_norm={m['grad_norm']:.3f} "
            f"tokens={int(m['tokens'])} tgs={m['tgs']:.0f} tgs_e2e={m['tgs_e2e']:.0f} mfu={mfu} "
            f"data_time={m['data_time']:.3f}s step_time={m['step_time']:.3f}s {mem}")


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: _train_loop, its error made portable to the driver (core.errors)."""
    try:
        _train_loop(config)
    except Exception as err:
        replacement = portable(err)
        if replacement is err:
            raise
        traceback.print_exc()  # the whole story stays in the job log
        raise replacement from None


def _train_loop(config: dict[str, Any]) -> None:
    import ray

    stamps = {"entered_at": time.time()}  # core.timing's phases, for the driver
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch/deepspeed deprecation chatter
    spec, run, job_dir = config["spec"], config["run"], Path(config["job_dir"])
    t = spec.trainer
    env = _worker_env()
    (job_dir / "workers").mkdir(parents=True, exist_ok=True)
    (job_dir / "workers" / f"rank{env.rank}.pid").write_text(str(os.getpid()))
    _seed_all(t.seed + env.rank)
    ds_config = build_ds_config(t, bf16=config["bf16"])
    dtype = torch.bfloat16 if config["bf16"] else torch.float32
    model, hf_config, tokenizer = build_for_training(spec, ds_config, dtype)
    if (fp8 := apply_precision(model, t, env.device)) and env.rank == 0:
        print(f"fp8: {fp8} Linears of the blocks train in float8 ({t.fp8_scaling} scales)", flush=True)
    ops = _fuse_ops(model, t.fused_ops, env)
    if t.compile == "blocks" and (compiled := compile_blocks(model)) and env.rank == 0:
        print(f"compiled: {compiled} blocks", flush=True)
    if t.sequence_parallel > 1:
        sequence_parallel.enable(model, t.sequence_parallel, t.micro_batch_size)
    info = _log_model(run, model, env)
    engine, scheduler = build_engine(spec, model, ds_config, env.device)

    ckpt_root = storage.join(config["job_uri"], "checkpoints")
    # this job's own latest checkpoint wins (a Ray Train restart after a failure); else the requested one
    resume_from = checkpoint.latest(ckpt_root) or config["resume_from"]
    start = checkpoint.load(engine, resume_from, env.rank) if resume_from else 0
    if start and env.rank == 0:
        print(f"resumed from {resume_from} at step {start}", flush=True)  # workers' INFO logging is off
        run.set_tags({"resumed_from": resume_from, "resumed_at_step": start})
        checkpoint.record_resume(config["job_uri"], resume_from, start)

    rows = ray.get(config["rows"])
    seq_len = spec.data.pack_max_length if spec.data.packing else spec.data.max_length
    where = sequence_parallel.layout(env.world, env.rank, t.sequence_parallel)
    plan = BatchPlan(rows, t.micro_batch_size, t.grad_accum, where.data_world, where.data_rank, spec.data.seed,
                     pad_id=tokenizer.pad_token_id or 0, pad_to=_pad_to(t, seq_len))
    meter = Throughput(flops_per_token(hf_config, info["total_params"] - embedding_params(model), seq_len),
                       peak_tflops(t.peak_tflops, env.device), env.world)
    history, chunk_loss = [], ops.cross_entropy_sum if ops else None  # each chunk's loss, None: eager
    stamps["loaded_at"] = time.time()
    for step in range(start + 1, t.max_steps + 1):
        began = time.perf_counter()
        micro_batches = plan.step(step)
        if where.size > 1:
            micro_batches = [sequence_parallel.shard(b, where) for b in micro_batches]
        data_time = time.perf_counter() - began
        lr = scheduler.get_last_lr()[0]
        with profiled(step, t.profile_step, env.device, env.rank, run):
            loss, targets, tokens = train_step(engine, micro_batches, env, t.loss_chunk_tokens, chunk_loss)
        if env.device.type == "cuda":
            torch.cuda.synchronize()
        step_time = time.perf_counter() - began
        grad_norm = float(engine.get_global_grad_norm() or 0.0)
        _check_finite(step, loss, grad_norm)
        metrics = {"loss": loss, "lr": lr, "grad_norm": grad_norm,
                   "tokens": tokens, "loss_tokens": targets, "data_time": data_time, "step_time": step_time,
                   **meter.step(tokens, step_time), **memory_stats(env.device)}
        history.append({"step": step, "loss": loss})
        if env.rank == 0 and (step % t.log_every == 0 or step == t.max_steps):
            print(_step_line(step, t.max_steps, metrics), flush=True)
            run.log_metrics(metrics, step)
        stop, every = _stop_asked(config["stop_key"], env), t.checkpoint.every_n_steps
        saved = t.checkpoint.save and (step == t.max_steps or bool(every) and (step % every == 0 or stop))
        if saved:
            checkpoint.save(engine, ckpt_root, step, env.rank, t.checkpoint.keep_last)
        if stop:
            if env.rank == 0:
                print(f"stopped after step {step} (signal)" + (", checkpoint saved" if saved else ""), flush=True)
            return  # the driver raises Interrupted: the run ends KILLED

    export, stamps["trained_at"] = None, time.time()
    if t.checkpoint.export:
        export = export_trained(spec, engine, tokenizer, storage.join(config["job_uri"], "export"), run, env.rank)
    if env.rank == 0:
        summary = {"final_step": t.max_steps, "resumed_at": start, "resumes": checkpoint.resumes(config["job_uri"]),
                   "losses": history, "export": export, "stamps": stamps}
        # in the job's storage: rank 0 may run on another node than the driver
        storage.write_text(storage.join(config["job_uri"], "summary.json"), json.dumps(summary, indent=2))
    dist.barrier()
