"""SFT driver: runs in the orchestrator process; validates, builds the data, launches Ray Train."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from core import console, interrupt, storage
from core.cluster import check_fits, wants_gpu
from core.data.sft import SFTData, build_sft_data, validate_data_config
from core.errors import ConfigError
from core.models import MODELS
from core.models.freeze import check_freeze
from core.timing import lap
from jobs.base import RunContext
from jobs.sft import checkpoint
from jobs.sft.block_compile import COMPILE_MODES
from jobs.sft.deepspeed_config import check_zero, hooks_per_block
from jobs.sft.precision import check_precision, check_precision_on
from jobs.sft.schedule import lr_multiplier
from jobs.sft.sequence_parallel import check_sequence_parallel

log = logging.getLogger("jobs.sft")
TRI_STATE = ("auto", "true", "false")
FUSED_OPS = (*TRI_STATE, "liger")  # liger: kernels/fused's ops from Liger-Kernel
STEP_LINE = r"step (?P<done>\d+)/(?P<total>\d+) "  # worker.py's _step_line


def _check_trainer(t: Any) -> None:
    positive = {"num_workers": t.num_workers, "max_steps": t.max_steps, "micro_batch_size": t.micro_batch_size,
                "grad_accum": t.grad_accum, "log_every": t.log_every}
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"trainer.{name}", f"must be >= 1 (got {value})")
    if t.loss_chunk_tokens < 0:
        raise ConfigError("trainer.loss_chunk_tokens", f"must be >= 0 (0: the model's loss), got {t.loss_chunk_tokens}")
    for name, allowed in (("use_gpu", TRI_STATE), ("bf16", TRI_STATE), ("fused_ops", FUSED_OPS)):
        if str(getattr(t, name)).lower() not in allowed:
            raise ConfigError(f"trainer.{name}", f"must be one of {', '.join(allowed)}")
    if str(t.fused_ops).lower() == "liger" and str(t.use_gpu).lower() == "false":
        raise ConfigError("trainer.fused_ops", "liger runs Triton kernels on CUDA workers only (trainer.use_gpu=false)")
    if t.checkpoint.every_n_steps and not t.checkpoint.save:
        raise ConfigError("trainer.checkpoint.every_n_steps", f"{t.checkpoint.every_n_steps} with "
                                                               "trainer.checkpoint.save=false (which saves none)")
    lr_multiplier(t.optim, t.max_steps)
    check_zero(t)
    _check_compile(t)
    check_precision(t)
    check_sequence_parallel(t)


def _check_compile(t: Any) -> None:
    if t.compile not in COMPILE_MODES:
        raise ConfigError("trainer.compile", f"{t.compile}: not one of {', '.join(COMPILE_MODES)}")
    if t.compile == "blocks" and t.zero.stage == 3 and not hooks_per_block(t.zero):
        raise ConfigError("trainer.compile", "blocks under ZeRO-3 needs trainer.zero.granularity=block (DeepSpeed's "
                                             "per-module hooks would break each compiled layer into pieces)")


def _resume_point(t: Any, ctx: RunContext) -> str | None:
    point = _find_resume_point(t, ctx)
    if point:
        checkpoint.check_files(point)
    return point


def _find_resume_point(t: Any, ctx: RunContext) -> str | None:
    ckpt_root = storage.join(ctx.job_uri, "checkpoints")
    mode = t.checkpoint.resume
    if mode == "auto":
        return checkpoint.latest(ckpt_root)
    if mode == "never":
        if checkpoint.latest(ckpt_root):
            raise ConfigError("trainer.checkpoint.resume",
                              f"never, but {ckpt_root} has checkpoints: use resume=auto or a new job.name")
        return None
    if not storage.is_published(mode):
        raise ConfigError("trainer.checkpoint.resume", f"{mode}: not a complete checkpoint directory")
    return storage.absolute(mode)


def _bf16(t: Any, use_gpu: bool) -> bool:
    setting = str(t.bf16).lower()
    if setting != "auto":
        return setting == "true"
    return use_gpu  # the accelerators this targets (Ampere+) all have bf16; CPU bf16 is slow


def _keeping_our_handlers(trainer_cls: type) -> type:
    """Ray Train's fit() replaces the SIGINT handler with its own (abort the controller, exit 1): core.interrupt's
    stops the workers after their step instead, for SIGINT as for SIGTERM."""

    class Trainer(trainer_cls):  # type: ignore[misc, valid-type]
        def _register_sigint_handler(self, controller: Any) -> None:
            interrupt.install()

    assert hasattr(trainer_cls, "_register_sigint_handler"), "Ray Train's SIGINT hook moved: see core/interrupt.py"
    return Trainer


@dataclass
class Prepared:
    data: SFTData
    resume_from: str | None


class SFTJob:
    sections = ("model", "data", "trainer")

    @staticmethod
    def check(spec: Any) -> None:
        _check_trainer(spec.trainer)
        validate_data_config(spec.data)

    def prepare(self, spec: Any, ctx: RunContext) -> Prepared:
        source = MODELS.get(spec.model.name)
        source.validate(spec.model)
        check_freeze(source, spec.model)
        data = build_sft_data(spec.data, source.tokenizer(spec.model), source.processor(spec.model))
        log.info("data: %s", json.dumps(data.stats))
        ctx.run.log_params({f"data.stats.{k}": v for k, v in data.stats.items()})
        return Prepared(data, _resume_point(spec.trainer, ctx))

    def run(self, spec: Any, ctx: RunContext, prepared: Prepared) -> dict[str, Any]:
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        from jobs.sft.worker import train_loop

        t = spec.trainer
        # Ray Train re-routes workers' print() through its logger, which echoes it a second time
        os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
        # Ray Train's controller notices the end of training at its next poll of the workers (every 2 s by default):
        # a poll is cheap, and the wait was the job's to pay (Ray passes this on to the controller)
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        use_gpu = wants_gpu(t.use_gpu)
        check_precision_on(t, use_gpu)
        resources = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if use_gpu else {})}
        check_fits("trainer", t.num_workers, t.cpus_per_worker, t.gpus_per_worker if use_gpu else 0,
                   gpu_field="gpus_per_worker")
        stop_key = f"{ctx.run.run_id or ctx.job_uri}:{os.getpid()}"
        config = {"spec": spec, "run": ctx.run, "job_dir": str(ctx.job_dir), "job_uri": ctx.job_uri,
                  "rows": ray.put(prepared.data.rows), "bf16": _bf16(t, use_gpu), "resume_from": prepared.resume_from,
                  "stop_key": stop_key}
        trainer = _keeping_our_handlers(TorchTrainer)(
            train_loop,
            train_loop_config=config,
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
            run_config=RunConfig(name="ray-train", storage_path=str(ctx.job_dir / "ray"),
                                 failure_config=FailureConfig(max_failures=t.max_failures)),
        )
        log.info("training: %d worker(s) starting (Ray Train, DeepSpeed ZeRO-%d); their start-up lines go to "
                 "%s/logs/job.log", t.num_workers, t.zero.stage, ctx.job_dir)
        # a signal: the workers stop after their step (and checkpoint, if the job checkpoints), then this raises
        with interrupt.safe_points(on_request=lambda signum: interrupt.publish(stop_key, signum)), \
                console.progress(STEP_LINE, "sft", "step"):  # rank 0's step lines (worker.py) drive the bar
            trainer.fit()
            interrupt.check()
        text = storage.read_text(storage.join(ctx.job_uri, "summary.json"))
        if text is None:
            raise RuntimeError(f"{ctx.job_uri}: training ended without rank 0's summary.json")
        summary = json.loads(text)
        stamps = summary["stamps"]  # rank 0's
        lap("load", at=stamps["entered_at"])
        lap("work", at=stamps["loaded_at"])
        lap("publish", at=stamps["trained_at"])
        return {"job_dir": ctx.job_uri, "export": summary["export"], "final_step": summary["final_step"],
                "final_loss": summary["losses"][-1]["loss"] if summary["losses"] else None}
