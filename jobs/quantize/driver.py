"""Quantize driver (orchestrator process): validates everything before Ray starts, then walks the decoder
blocks one at a time over data-parallel calibration actors, checkpoints each block, and exports."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from core import interrupt, storage
from core.cluster import ActorGroup, check_fits, compute_dtype, lap_workers_loaded, remote_actor, wants_gpu
from core.data.calib_mm import CalibRows, model_calibration_rows
from core.errors import ConfigError
from core.models import MODELS
from core.models.select import select_linears
from core.timing import lap
from jobs.base import RunContext
from jobs.quantize import checkpoint
from jobs.quantize.algorithms import ALGORITHMS
from jobs.quantize.algorithms.base import build_config
from kernels.quant import QuantFormat, check_group_size, parse_format, parse_target

log = logging.getLogger("jobs.quantize")


PARALLEL = ("data", "blocks", "experts")  # experts: data parallel, the Linears' solves split over workers
DTYPES = ("auto", "float32", "bfloat16", "float16")
MIXED_ALGORITHMS = ("rtn", "gptq", "awq")  # per-Linear weight-only formats (SmoothQuant is W8A8 throughout)


@dataclass
class Prepared:
    fmt: QuantFormat
    formats: dict[str, str]  # mixed precision: full Linear name -> format name (fp16/bf16: left FP)
    rows: CalibRows  # calibration token ids [N, T], per-token modality and labels, images (VLMs)
    num_blocks: int
    finished: set[int]  # blocks finished by an earlier attempt of this job
    fp_modules: list[str]  # VLM modules left FP outside the blocks (vision tower, projector)


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
    for name, allowed in (("parallel", PARALLEL), ("dtype", DTYPES)):
        if getattr(q, name) not in allowed:
            raise ConfigError(f"quant.{name}", f"must be one of {', '.join(allowed)} (got {getattr(q, name)!r})")
    if q.parallel == "experts" and not algo_cls.splits_by_linear:
        raise ConfigError("quant.parallel", f"experts splits the Linears' solves across workers: {q.algorithm} "
                          "searches scales over whole blocks (use gptq or rtn, or parallel=data)")
    return parse_format(q.format, q.symmetric)


def _recipe(q: Any, tracking_uri: str) -> dict[str, str]:
    """The per-Linear formats of `quant.recipe`, checked (empty without a recipe)."""
    if not q.recipe:
        return {}
    from core.quant.recipe import load_recipe

    if q.algorithm not in MIXED_ALGORITHMS:
        raise ConfigError("quant.algorithm", f"a recipe needs one of {', '.join(MIXED_ALGORITHMS)} "
                          f"(got {q.algorithm!r})")
    formats = load_recipe(q.recipe, tracking_uri)
    for name, fmt in formats.items():
        parsed = parse_target(fmt)
        if parsed is not None and parsed.act_bits:
            raise ConfigError("quant.recipe", f"{name}: {fmt} quantizes activations; mixed precision takes "
                              "weight-only formats and fp16")
    return formats


def _check_model(spec: Any, fmt: QuantFormat, formats: dict[str, str]) -> tuple[Any, int, list[str]]:
    """Group sizes against every block Linear, on a meta-device model (no weights, no memory); the VLM
    modules left FP."""
    from core.blocks.layerwise import Layerwise, block_linears_in_features
    from core.models.auto import meta_model

    source = MODELS.get(spec.model.name)
    source.validate(spec.model)
    hf_config = source.hf_config(spec.model)
    model = meta_model(source, spec.model)  # the architecture alone (causal LM or VLM class), no weights
    linears = block_linears_in_features(model)
    unknown = sorted(set(formats) - set(linears))
    if unknown:
        raise ConfigError("quant.recipe", f"names Linears this model does not have: {', '.join(unknown[:3])}")
    ignored = select_linears(model, list(spec.quant.ignore), "quant.ignore")
    for name, in_features in linears.items():
        own = parse_target(formats[name]) if name in formats else fmt
        if own is not None:
            check_group_size(own, name, in_features)
        if name in ignored:
            raise ConfigError("quant.ignore", f"{name} is inside a decoder block; ignoring block Linears is not "
                              "supported yet (only modules outside the blocks, e.g. lm_head)")
    lw = Layerwise(model)
    if formats:
        _check_serving_sets(lw, {name: formats.get(name, fmt.name) for name in linears})
    return hf_config, len(lw.blocks), lw.fp_modules()


def _check_serving_sets(lw: Any, formats: dict[str, str]) -> None:
    """A recipe (with quant.format for the Linears it does not name) must give each set of Linears that serving
    engines fuse one format: vLLM refuses q/k/v (or gate/up, or a block's experts) in different schemes."""
    from core.blocks.mappings import find_linears, serving_sets
    from core.quant.recipe import check_serving_sets

    check_serving_sets(formats, [tuple(lw.block_prefix(i) + n for n in members) for i, block in enumerate(lw.blocks)
                                 for members in serving_sets(block, list(find_linears(block)))])


def _split(rows: CalibRows, batch_size: int, workers: int) -> list[list[CalibRows]]:
    """Batches first, then contiguous runs of batches per worker: every worker count sees the same batches,
    so forwards (and their float rounding) do not depend on it."""
    batches = rows.batches(batch_size)
    return [[batches[k] for k in part] for part in np.array_split(np.arange(len(batches)), workers)]


def _modality_weights(workers: list, blocks_mode: bool, rows: CalibRows, num_blocks: int, root: str,
                      ctx: RunContext) -> dict[str, Any]:
    """MBQ's per-block weights: from an earlier attempt of this job (resume), else the gradient pass on the
    workers (data parallel: shard sums reduced; blocks mode: every worker holds every batch, one computes)."""
    import ray

    from jobs.quantize.algorithms.stats import reduce_stats
    from jobs.quantize.modality import modality_weights

    uri = storage.join(root, "modality_weights.json")
    saved = storage.read_text(uri)
    if saved is not None:
        log.info("mbq: modality weights from %s", uri)
        return json.loads(saved)
    began = time.perf_counter()
    stats = reduce_stats(ray.get([w.modality_grads.remote() for w in (workers[:1] if blocks_mode else workers)]))
    weights = modality_weights(stats, num_blocks, rows.counts())
    storage.write_text(uri, json.dumps(weights, indent=2))
    for i, b in enumerate(weights["blocks"]):
        ctx.run.log_metrics({"mbq_grad_vision": b["grad_vision"], "mbq_grad_text": b["grad_text"],
                             "mbq_w_vision": b["w_vision"]}, step=i)
        log.info("mbq block %d: mean|dL/dY| vision %.3e text %.3e -> w_vision %.4f (w_text 1)", i,
                 b["grad_vision"], b["grad_text"], b["w_vision"])
    log.info("mbq: gradient pass %.1fs", time.perf_counter() - began)
    return weights


@dataclass
class Workers(ActorGroup):
    """Calibration actors created by warm_up, each building the model as it starts (attached to a running cluster:
    while the driver opens the MLflow run and prepares); start() later gives them their batches."""
    use_gpu: bool
    dtype: str


class QuantizeJob:
    sections = ("model", "quant", "calib")

    @staticmethod
    def check(spec: Any) -> None:
        from core.data.calib_mm import check_calib

        _check_quant(spec.quant)
        check_calib(spec.calib)

    def warm_up(self, spec: Any) -> Workers:
        """quant.num_workers calibration actors loading the model (blocks mode ends those it has no block for)."""
        from jobs.quantize.worker import CalibWorker

        q = spec.quant
        use_gpu = wants_gpu(q.use_gpu)
        dtype = compute_dtype(q.dtype, use_gpu)
        # blocks mode needs one worker per block left (known after prepare; run() checks that many fit)
        check_fits("quant", 1 if q.parallel == "blocks" else q.num_workers, q.cpus_per_worker, 1 if use_gpu else 0)
        actor = remote_actor(CalibWorker, num_cpus=q.cpus_per_worker, num_gpus=1 if use_gpu else 0)
        log.info("quantize: starting %d calibration worker(s) on %s (%s)", q.num_workers, "GPU" if use_gpu else "CPU",
                 dtype)
        return Workers([actor.remote(spec, rank, use_gpu, dtype) for rank in range(q.num_workers)], use_gpu, dtype)

    def prepare(self, spec: Any, ctx: RunContext) -> Prepared:
        fmt = _check_quant(spec.quant)
        formats = _recipe(spec.quant, ctx.run.uri)
        hf_config, num_blocks, fp_modules = _check_model(spec, fmt, formats)
        rows = model_calibration_rows(spec.calib, MODELS.get(spec.model.name), spec.model)
        counts = rows.counts()
        if ALGORITHMS.get(spec.quant.algorithm).needs_modality_grads and not counts["vision"]:
            raise ConfigError("calib", f"quant={spec.quant.algorithm} balances vision and text tokens: give it "
                              "image+caption calibration (calib=image_caption)")
        n_batches = -(-len(rows) // spec.quant.batch_size)
        if spec.quant.parallel != "blocks" and spec.quant.num_workers > n_batches:
            raise ConfigError("quant.num_workers", f"{spec.quant.num_workers} workers but only "
                              f"{n_batches} calibration batches")
        manifest = {"spec_hash": checkpoint.spec_hash(spec), "model_hash": checkpoint.model_hash(hf_config),
                    "num_blocks": num_blocks}
        root = storage.join(ctx.job_uri, "blocks")
        checkpoint.check_manifest(root, manifest, spec.quant.resume)
        finished = checkpoint.finished_set(root)
        if spec.job.parent_run:
            ctx.run.set_tags({"job.parent_run": spec.job.parent_run})
        ctx.run.log_params({"calib.tokens": int(rows.ids.size), "quant.num_blocks": num_blocks,
                            "calib.vision_tokens": counts["vision"], "calib.text_tokens": counts["text"]})
        log.info("calibration: %d x %d tokens (%d vision, %d text); %d blocks, %d already done; parallel=%s",
                 *rows.ids.shape, counts["vision"], counts["text"], num_blocks, len(finished), spec.quant.parallel)
        if fp_modules:
            log.info("left in FP (not calibrated, not quantized): %s", ", ".join(fp_modules))
        return Prepared(fmt, formats, rows, num_blocks, finished, fp_modules)

    def run(self, spec: Any, ctx: RunContext, prepared: Prepared) -> dict[str, Any]:
        import ray

        from jobs.quantize.blockloop import balanced_runs, export, run_alone, run_blocks

        q, p, warm = spec.quant, prepared, ctx.warm
        log.info("calibrating in %s on %s", warm.dtype, "GPU" if warm.use_gpu else "CPU")
        rows, weights = p.rows, None
        needs_weights = ALGORITHMS.get(q.algorithm).needs_modality_grads
        root = storage.join(ctx.job_uri, "blocks")
        progress = tqdm(total=p.num_blocks, initial=len(p.finished), desc="quantize", unit="block")
        started = time.perf_counter()
        if q.parallel == "blocks":
            todo = [i for i in range(p.num_blocks) if i not in p.finished]
            n = max(1, min(q.num_workers, len(todo)))  # every started worker must be placed at once
            check_fits("quant", n, q.cpus_per_worker, 1 if warm.use_gpu else 0)
            for surplus in warm.actors[n:]:
                ray.kill(surplus)
            workers = warm.actors[:n]
            ray.get([w.start.remote(_split(rows, q.batch_size, 1)[0], p.formats, str(root)) for w in workers])
            lap_workers_loaded(workers)
            if needs_weights:
                weights = _modality_weights(workers, True, rows, p.num_blocks, root, ctx)
                ray.get([w.set_modality_weights.remote(weights) for w in workers])
            began = time.perf_counter()
            assignments = balanced_runs(todo, n, ALGORITHMS.get(q.algorithm).fp_block_cost)
            with interrupt.safe_points():  # a signal stops after the block (blockloop._record)
                history = run_alone(workers, assignments, root, ctx, progress)
        else:
            done = checkpoint.finished_blocks(root)
            shards = _split(rows, q.batch_size, q.num_workers)
            workers = warm.actors
            ray.get([w.start.remote(shard, p.formats, str(root), done)
                     for w, shard in zip(workers, shards, strict=True)])
            lap_workers_loaded(workers)
            if needs_weights:
                weights = _modality_weights(workers, False, rows, p.num_blocks, root, ctx)
                ray.get([w.set_modality_weights.remote(weights) for w in workers])
            began = time.perf_counter()
            if done:
                log.info("resuming at block %d of %d", done, p.num_blocks)
            todo = list(range(done, p.num_blocks))
            with interrupt.safe_points():  # a signal stops after the block (blockloop._record)
                if len(workers) == 1:  # stats never need to leave the worker
                    history = run_alone(workers, [todo], root, ctx, progress)
                else:
                    history = run_blocks(workers, todo, ALGORITHMS.get(q.algorithm).n_passes, root, ctx, progress,
                                         split_solves=q.parallel == "experts")
        warm.close()  # the devices are free before the export
        summary: dict[str, Any] = {"job_dir": ctx.job_uri, "blocks": p.num_blocks,
                                   "resumed_at": len(p.finished)}
        if history:
            summary["last_block_rel_err"] = round(history[-1]["block_rel_err"], 6)
            summary["load_seconds"] = round(began - started, 2)  # waited for the workers: model, first inputs
            summary["calib_wall_seconds"] = round(time.perf_counter() - began, 2)
            summary["seconds_per_block"] = round(sum(h["block_seconds"] for h in history) / len(history), 3)
            if "gpu_peak_gib" in history[0]:
                summary["gpu_peak_gib"] = round(max(h["gpu_peak_gib"] for h in history), 2)
        if q.export:
            lap("publish")
            summary["export"] = export(spec, p.fmt, root, ctx, warm.dtype, p.formats, p.fp_modules, weights)
        return summary
