"""The block loop (driver side): per block, gather the workers' stats pass by pass, reduce them, have every
worker apply the same quantization, check they agree, checkpoint, log; then export from the checkpoints."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core import interrupt, storage
from core.errors import NumericError
from jobs.base import RunContext
from jobs.quantize import checkpoint
from jobs.quantize.algorithms.stats import Stats, reduce_stats
from kernels.quant import parse_target

log = logging.getLogger("jobs.quantize")


def _calibrate(workers: list, n_passes: int, seconds: dict[str, float]) -> Stats:
    """The block's stats, reduced over the workers pass by pass; adds to `seconds` the time spent waiting
    for the workers' shards (their compute and the transfer here) and reducing them."""
    import ray

    stats = Stats()
    for p in range(n_passes):
        began = time.perf_counter()
        prior = ray.put(stats)
        parts = ray.get([w.observe.remote(p, prior) for w in workers])
        reduced = time.perf_counter()
        stats = stats.merged(reduce_stats(parts))
        seconds["observe"] += reduced - began
        seconds["reduce"] += time.perf_counter() - reduced
    return stats


def _routed_metrics(per_worker: list[dict[str, list[int]]]) -> dict[str, float]:
    """Mixture-of-experts blocks: tokens the router sent to each expert (summed over workers). Every expert was
    calibrated on every token (core/models/moe.py); these say which ones serving will rarely use."""
    metrics: dict[str, float] = {}
    for name in per_worker[0] if per_worker else {}:
        counts = [sum(column) for column in zip(*(w[name] for w in per_worker), strict=True)]
        metrics[f"{name}.routed_tokens_min"] = min(counts)
        metrics[f"{name}.routed_tokens_max"] = max(counts)
        metrics[f"{name}.experts_never_routed"] = sum(c == 0 for c in counts)
    return metrics


def block_metrics(outs: list[dict], result: Any, seconds: float) -> dict[str, float]:
    sse, update, count = (sum(o[k] for o in outs) for k in ("sse", "update", "count"))
    metrics = {"block_mse": sse / max(count, 1), "block_rel_err": sse / max(update, 1e-30), "block_seconds": seconds}
    peaks = [o["gpu_peak_gib"] for o in outs if "gpu_peak_gib" in o]
    if peaks:
        metrics["gpu_peak_gib"] = max(peaks)
    metrics.update(_routed_metrics([o.get("routed", {}) for o in outs]))
    for key in ("weight_rel_err", "output_rel_err"):
        values = [m[key] for m in result.metrics.values() if key in m]
        if values:
            metrics[f"mean_{key}"] = sum(values) / len(values)
    for name, layer_metrics in result.metrics.items():
        metrics.update({f"{name}.{k}": v for k, v in layer_metrics.items()})
    return metrics


def finish_block(root: str | Path, index: int, outs: list[dict], token: str, metrics: dict[str, float],
                 with_inputs: bool) -> None:
    """Checkpoint a calibrated block (driver or worker side) and publish it. parallel=data: the inputs
    the workers pushed under `token` are committed first, and the previous block's removed after: a
    resume only needs the last."""
    if with_inputs:
        storage.commit(checkpoint.inputs_dir(root, index), token)
    result = outs[0]["result"]
    final = checkpoint.block_dir(root, index)
    staged = storage.staging_dir(final)
    checkpoint.save_block(staged, result, outs[0]["state"],
                          {"metrics": metrics, "info": checkpoint.plain_metrics(result.info)})
    storage.publish_dir(staged, final)
    if with_inputs and index > 0:
        storage.remove(checkpoint.inputs_dir(root, index - 1))


def _record(index: int, metrics: dict[str, float], ctx: RunContext, progress: Any) -> None:
    bad = sorted(k for k in ("block_rel_err", "block_mse") if not math.isfinite(metrics[k]))
    if bad:
        raise NumericError(f"block {index}", f"{bad[0]} is {metrics[bad[0]]} (a NaN or Inf in the block's weights, "
                           "inputs or calibration statistics); nothing was exported")
    ctx.run.log_metrics(metrics, step=index)
    progress.update(1)
    progress.set_postfix(rel_err=f"{metrics['block_rel_err']:.2e}")
    log.info("block %d: rel_err=%.3e mse=%.3e %.1fs", index, metrics["block_rel_err"], metrics["block_mse"],
             metrics["block_seconds"])
    interrupt.check()  # a safe point: every block recorded so far is checkpointed (or is redone on resume)


def _solve_split(workers: list, stats: Any) -> Any:
    """Expert parallel: each worker solves its share of the block's Linears; their results, merged, for all."""
    import ray

    from jobs.quantize.algorithms.base import BlockResult

    merged = BlockResult()
    for part in ray.get([w.solve.remote(stats, k, len(workers)) for k, w in enumerate(workers)]):
        merged.layers.update(part.layers)
        merged.metrics.update(part.metrics)
    return ray.put(merged)


def run_blocks(workers: list, indices: Iterable[int], n_passes: int, root: str, ctx: RunContext,
               progress: Any, split_solves: bool = False) -> list[dict[str, float]]:
    """Data parallel over several workers: per block, stats are reduced here and every worker applies (with
    `split_solves`, expert parallel: each solves its share of the Linears, then every worker adopts them all)."""
    import ray

    history = []
    for index in indices:
        began = time.perf_counter()
        ray.get([w.begin_block.remote(index) for w in workers])
        seconds = {"begin": time.perf_counter() - began, "observe": 0.0, "reduce": 0.0}
        stats = ray.put(_calibrate(workers, n_passes, seconds))
        token = uuid.uuid4().hex[:12]
        applying = time.perf_counter()
        merged = _solve_split(workers, stats) if split_solves else None
        outs = ray.get([w.apply.remote(stats, str(root), token, merged=merged) for w in workers])
        seconds["apply"] = time.perf_counter() - applying
        if len({o["digest"] for o in outs}) != 1:  # apply must be deterministic given the reduced stats
            raise RuntimeError(f"block {index}: workers quantized differently (digests {[o['digest'] for o in outs]})")
        metrics = block_metrics(outs, outs[0]["result"], time.perf_counter() - began)
        checkpointing = time.perf_counter()
        finish_block(root, index, outs, token, metrics, with_inputs=True)
        seconds["checkpoint"] = time.perf_counter() - checkpointing
        # where a data-parallel block's time goes (workers' compute vs moving stats and checkpoints)
        metrics.update({f"seconds_{k}": v for k, v in seconds.items()})
        log.info("block %d phases: %s", index, " ".join(f"{k} {v:.2f}s" for k, v in seconds.items()))
        _record(index, metrics, ctx, progress)
        history.append(metrics)
    progress.close()
    return history


def balanced_runs(todo: list[int], n: int, fp_cost: float) -> list[list[int]]:
    """`todo` (ascending block indices) cut into `n` non-empty contiguous runs, minimising the largest worker
    cost: a run's blocks at 1 each, plus `fp_cost` per block its worker must only run forward first (every
    block before the run's last that is not its own). Exact: min-max over cut points, O(n len^2)."""
    m = len(todo)
    if not todo:  # every block finished (a rerun): nothing to split, the job goes on to export
        return [[] for _ in range(n)]
    if not 1 <= n <= m:
        raise ValueError(f"cannot cut {m} blocks into {n} non-empty runs")

    def cost(s: int, e: int) -> float:  # the run todo[s:e]
        return fp_cost * (todo[e - 1] + 1 - (e - s)) + (e - s)

    # best[k][e]: (largest cost, cut) covering todo[:e] with k runs
    best = [{e: (cost(0, e), 0) for e in range(1, m + 1)}]
    for k in range(1, n):
        best.append({e: min((max(best[k - 1][s][0], cost(s, e)), s) for s in range(k, e))
                     for e in range(k + 1, m + 1)})
    cuts, e = [], m
    for k in reversed(range(n)):
        s = best[k][e][1]
        cuts.append((s, e))
        e = s
    return [todo[s:e] for s, e in reversed(cuts)]


def run_alone(workers: list, assignments: list[list[int]], root: str, ctx: RunContext,
              progress: Any) -> list[dict[str, float]]:
    """Each worker calibrates its own blocks by itself (one worker, or blocks mode); all calls are queued
    at once (an actor runs its calls in order) and recorded as they finish."""
    import ray

    pending = {w.calibrate.remote(i, str(root)): i for w, indices in zip(workers, assignments, strict=True)
               for i in indices}
    done: dict[int, dict[str, float]] = {}
    waiting = list(pending)
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        index = pending[ready[0]]
        done[index] = ray.get(ready[0])
        _record(index, done[index], ctx, progress)
    ray.get([w.flush.remote() for w in workers])  # the last checkpoints are written before anything reads them
    progress.close()
    return [done[i] for i in sorted(done)]


def export(spec: Any, fmt: Any, root: str, ctx: RunContext, dtype: str, formats: dict[str, str],
           fp_modules: list[str] | None = None, modality_weights: dict[str, Any] | None = None) -> str:
    """`fp_modules`: the VLM modules left FP; `modality_weights`: MBQ's (written beside the smoothing scales, the
    scale cache). The export keeps the input model's dtype."""
    from core.models import MODELS
    from core.models.export import export_dtype
    from core.models.select import select_linears
    from jobs.quantize.export import write_export
    from jobs.quantize.worker import build_fp_model

    model = build_fp_model(spec, dtype)
    source = MODELS.get(spec.model.name)
    tokenizer = source.tokenizer(spec.model)
    processor = source.processor(spec.model)  # a VLM's: the export reloads with it (eval=caption)
    blocks = [checkpoint.block_metrics(root, i) for i in sorted(checkpoint.finished_set(root))]
    info = {"algorithm": spec.quant.algorithm, "format": fmt.name, "symmetric": fmt.symmetric,
            "options": dict(spec.quant.options), "calib": dict(vars(spec.calib)), "blocks": blocks}
    per_module = {name: parse_target(f) for name, f in formats.items()}
    if formats:
        info["recipe"] = {"source": spec.quant.recipe, "formats": formats}
    if modality_weights:
        info["modality_weights"] = modality_weights
    ignore = sorted(select_linears(model, list(spec.quant.ignore), "quant.ignore"))
    out = write_export(model, tokenizer, root, fmt, ignore, storage.join(ctx.job_uri, "export"), info, ctx.run,
                       per_module, processor=processor, modality_weights=modality_weights,
                       fp_modules=fp_modules or [], dtype=export_dtype(source.hf_config(spec.model)),
                       log_exports=spec.tracking.log_exports)
    log.info("export: %s", out)
    return out
