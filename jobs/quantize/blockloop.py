"""The block loop (driver side): per block, gather the workers' stats pass by pass, reduce them, have every
worker apply the same quantization, check they agree, checkpoint, log; then export from the checkpoints."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core import storage
from jobs.base import RunContext
from jobs.quantize import checkpoint
from jobs.quantize.algorithms.stats import Stats, reduce_stats

log = logging.getLogger("jobs.quantize")


def _calibrate(workers: list, n_passes: int) -> Stats:
    import ray

    stats = Stats()
    for p in range(n_passes):
        prior = ray.put(stats)
        stats = stats.merged(reduce_stats(ray.get([w.observe.remote(p, prior) for w in workers])))
    return stats


def block_metrics(outs: list[dict], result: Any, seconds: float) -> dict[str, float]:
    sse, update, count = (sum(o[k] for o in outs) for k in ("sse", "update", "count"))
    metrics = {"block_mse": sse / max(count, 1), "block_rel_err": sse / max(update, 1e-30), "block_seconds": seconds}
    for key in ("weight_rel_err", "output_rel_err"):
        values = [m[key] for m in result.metrics.values() if key in m]
        if values:
            metrics[f"mean_{key}"] = sum(values) / len(values)
    for name, layer_metrics in result.metrics.items():
        metrics.update({f"{name}.{k}": v for k, v in layer_metrics.items()})
    return metrics


def run_blocks(workers: list, indices: Iterable[int], n_passes: int, root: Path, ctx: RunContext,
               progress: Any) -> list[dict[str, float]]:
    import ray

    history = []
    for index in indices:
        began = time.perf_counter()
        ray.get([w.begin_block.remote(index) for w in workers])
        stats = ray.put(_calibrate(workers, n_passes))
        final = checkpoint.block_dir(root, index)
        staged = storage.staging_dir(final)
        outs = ray.get([w.apply.remote(stats, str(staged)) for w in workers])
        if len({o["digest"] for o in outs}) != 1:  # apply must be deterministic given the reduced stats
            raise RuntimeError(f"block {index}: workers quantized differently (digests {[o['digest'] for o in outs]})")
        result = outs[0]["result"]
        metrics = block_metrics(outs, result, time.perf_counter() - began)
        checkpoint.save_block(staged, result, outs[0]["state"],
                              {"metrics": metrics, "info": checkpoint.plain_metrics(result.info)})
        storage.publish_dir(staged, final)
        ctx.run.log_metrics(metrics, step=index)
        history.append(metrics)
        progress.update(1)
        progress.set_postfix(rel_err=f"{metrics['block_rel_err']:.2e}")
        log.info("block %d: rel_err=%.3e mse=%.3e %.1fs", index, metrics["block_rel_err"], metrics["block_mse"],
                 metrics["block_seconds"])
    progress.close()
    return history


def export(spec: Any, fmt: Any, root: Path, ctx: RunContext) -> Path:
    import json

    from core.models import MODELS
    from jobs.quantize.export import write_export
    from jobs.quantize.worker import build_fp_model

    model = build_fp_model(spec)
    tokenizer = MODELS.get(spec.model.name).tokenizer(spec.model)
    blocks = [json.loads((checkpoint.block_dir(root, i) / "metrics.json").read_text())
              for i in range(checkpoint.finished_blocks(root))]
    info = {"algorithm": spec.quant.algorithm, "format": fmt.name, "symmetric": fmt.symmetric,
            "options": dict(spec.quant.options), "calib": dict(vars(spec.calib)), "blocks": blocks}
    out = write_export(model, tokenizer, root, fmt, list(spec.quant.ignore), ctx.job_dir / "export", info)
    ctx.run.log_artifacts(out, "export")
    log.info("export: %s", out)
    return out
