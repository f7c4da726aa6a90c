"""Sensitivity driver: validates candidates, handles and the budget before any scoring (sizes are known from the
architecture alone; an embedded cluster is not even started for bad input), fans gradient scoring out over
data-parallel Ray actors (created by warm_up: on an attached cluster they start and load the model while prepare
runs), reduces the score sums, runs the exact search and writes the report (jobs/sensitivity/report.py) to MLflow."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core import console
from core.cluster import ActorGroup, check_fits, compute_dtype, remote_actor, wants_gpu
from core.errors import ConfigError
from core.timing import lap
from jobs.base import RunContext
from kernels.quant import parse_target

if TYPE_CHECKING:
    from core.data.calib_mm import CalibRows
# Nothing here imports torch at module level: warm_up() creates the workers before the driver pays for the ML stack
# (the workers import it themselves: "module:Class").

log = logging.getLogger("jobs.sensitivity")
HANDLE_MODES = ("serving", "shared_input")  # both keep each serving-fused set in one handle (_units)
REMOVED_MODES = {"linear": "each Linear alone could split Linears that serving engines fuse (q/k/v, gate/up, a "
                           "block's experts), which vLLM refuses: use serving (every other Linear is alone)"}
WORKER, WORKER_METHODS = "jobs.sensitivity.worker:ScoringWorker", ("score",)  # by path: imported in workers only
SCORES = {  # search.score -> what the report says a score is
    "gradient": "gradient (Fisher/Taylor): sum over tokens of (dL/dY . (Y_quantized - Y))^2, a Linear at a time",
    "loss_delta": "loss delta: the summed next-token loss with the Linear quantized minus without, a Linear at a time",
}


@dataclass
class Workers(ActorGroup):
    """Scoring actors created by warm_up, loading the model from `created_at` (wall clock) on."""
    created_at: float


@dataclass
class Prepared:
    rows: CalibRows  # calibration token ids [samples, seq_len], caption labels and images (VLMs)
    groups: dict[str, list[str]]  # handle -> its Linears (full names)
    shapes: dict[str, tuple[int, int]]  # Linear -> (in_features, out_features)
    excluded: dict[str, str]  # module -> why it is not scored


def _check(s: Any) -> None:
    for name in ("num_workers", "batch_size", "threads_per_worker"):
        if getattr(s, name) < 1:
            raise ConfigError(f"search.{name}", f"must be >= 1 (got {getattr(s, name)})")
    if s.score not in SCORES:
        raise ConfigError("search.score", f"must be one of {', '.join(SCORES)} (got {s.score!r})")
    if s.handles in REMOVED_MODES:
        raise ConfigError("search.handles", f"{s.handles!r} was removed: {REMOVED_MODES[s.handles]}")
    if s.handles not in HANDLE_MODES:
        raise ConfigError("search.handles", f"must be one of {', '.join(HANDLE_MODES)} (got {s.handles!r})")
    if len(s.candidates) < 2 or len(set(s.candidates)) != len(s.candidates):
        raise ConfigError("search.candidates", f"need at least 2 distinct formats (got {list(s.candidates)})")
    for cand in s.candidates:
        parse_target(cand)


def _merged(groups: list[tuple[str, ...]], names: list[str]) -> list[tuple[str, ...]]:
    """`names` partitioned: groups that share a Linear joined, every other Linear alone; members and parts in
    model order (the order of `names`)."""
    root = {n: n for n in names}

    def find(n: str) -> str:
        while root[n] != n:
            n = root[n]
        return n

    for group in groups:
        for n in group[1:]:
            root[find(n)] = find(group[0])
    parts: dict[str, list[str]] = {}
    for n in names:
        parts.setdefault(find(n), []).append(n)
    return [tuple(members) for members in parts.values()]


def _units(block: Any, names: list[str], fused: list[tuple[str, ...]], mode: str) -> list[tuple[str, ...]]:
    """A block's Linears as handles. Every mode keeps each serving-fused set in one handle (a recipe must never give
    its Linears different formats): serving adds nothing, shared_input joins the Linears reading one input."""
    from core.blocks.mappings import input_groups

    return _merged(fused + (input_groups(block, names) if mode == "shared_input" else []), names)


def _check_ignore_keeps_sets(sets: list[tuple[str, ...]], ignored: set[str]) -> None:
    """search.ignore leaves its Linears to quant.format: naming part of a serving-fused set would split it."""
    from core.quant.recipe import short_names

    for members in sets:
        named = [m for m in members if m in ignored]
        if 0 < len(named) < len(members):
            raise ConfigError("search.ignore", f"names {short_names(named)} but not all of {short_names(members)}: "
                              "serving engines fuse them, ignore all of them or none")


def _handles(spec: Any) -> tuple[dict[str, list[str]], dict[str, tuple[int, int]], dict[str, str]]:
    """Handles over the decoder blocks' Linears, their shapes, and every other Linear with the reason."""
    from torch import nn

    from core.blocks.layerwise import Layerwise
    from core.blocks.mappings import serving_sets
    from core.models import MODELS
    from core.models.auto import meta_model
    from core.models.select import select_linears
    from core.quant.recipe import handle_name

    source = MODELS.get(spec.model.name)
    model = meta_model(source, spec.model)  # causal LM or VLM class, no weights
    lw = Layerwise(model)
    ignored = select_linears(model, list(spec.search.ignore), "search.ignore")
    groups: dict[str, list[str]] = {}
    for i, block in enumerate(lw.blocks):
        prefix = lw.block_prefix(i)
        names = [n for n, m in block.named_modules() if isinstance(m, nn.Linear)]
        fused = serving_sets(block, names)
        _check_ignore_keeps_sets([tuple(prefix + n for n in s) for s in fused], ignored)
        for members in _units(block, names, fused, spec.search.handles):
            full = [prefix + n for n in members if prefix + n not in ignored]
            if full:
                groups[handle_name(full)] = full
    shapes = {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    scored = {n for members in groups.values() for n in members}
    fp_prefixes = tuple(f"{m}." for m in lw.fp_modules())

    def why(name: str) -> str:
        if name in ignored:
            return "search.ignore"
        if name.startswith(fp_prefixes):
            return "vision tower / projector: kept in 16-bit"
        return "outside the decoder blocks"

    excluded = {n: why(n) for n in shapes if n not in scored}
    return groups, {n: shapes[n] for n in scored}, excluded


def _summary(excluded: dict[str, str]) -> str:
    """Excluded Linears by reason, a few names each, for the log line."""
    from jobs.sensitivity.report import by_reason

    return "; ".join(f"{reason}: {', '.join(names[:3])}{f' (+{len(names) - 3} more)' if len(names) > 3 else ''}"
                     for reason, names in by_reason(dict(sorted(excluded.items()))).items()) or "none"


def _search_handles(groups: dict[str, list[str]], shapes: dict[str, tuple[int, int]],
                    scores: dict[str, dict[str, float]]) -> list:
    from jobs.sensitivity.search import make_handle

    return [make_handle(h, [shapes[m] for m in members], scores[h]) for h, members in groups.items()]


def _timing(parts: list[dict[str, Any]], created_at: float, scan_seconds: float) -> dict[str, float]:
    """Slowest worker's start (creation to its first line: worker process, imports), model load (the weights a part
    of it) and scoring, the workers' wall time from creation, the largest per-worker GPU peak."""
    out = {"start_seconds": max(p["entered_at"] for p in parts) - created_at,
           "load_seconds": max(p["load_seconds"] for p in parts),
           "weights_seconds": max(p["weights_seconds"] for p in parts),  # of the load: from_pretrained / build
           "score_seconds": max(p["score_seconds"] for p in parts), "scan_seconds": scan_seconds}
    if all("gpu_peak_gib" in p for p in parts):
        out["gpu_peak_gib"] = max(p["gpu_peak_gib"] for p in parts)
    return out


def _gather(calls: list[tuple[Any, Any]]) -> list[Any]:
    """Results of (actor, call) pairs in their order; each actor is ended as its result arrives, so workers that
    did not fit the cluster beside it (still pending) take its place."""
    import ray

    actors = {ref: actor for actor, ref in calls}
    results = {}
    while actors:
        (ref,), _ = ray.wait(list(actors), num_returns=1)
        results[ref] = ray.get(ref)
        ray.kill(actors.pop(ref))
    return [results[ref] for _, ref in calls]


class SensitivityJob:
    sections = ("model", "search", "calib")

    @staticmethod
    def check(spec: Any) -> None:
        from core.data.calib_mm import check_calib

        _check(spec.search)
        check_calib(spec.calib)

    def warm_up(self, spec: Any) -> Workers:
        """One scoring actor per worker, each loading the model as it starts (on a cluster the job attaches to, the
        runner calls this first of all, so the workers' start overlaps the MLflow run and prepare())."""
        s = spec.search
        use_gpu = wants_gpu(s.use_gpu)
        check_fits("search", 1, s.cpus_per_worker, 1 if use_gpu else 0)  # workers beyond the capacity wait (_gather)
        actor = remote_actor(WORKER, WORKER_METHODS, num_cpus=s.cpus_per_worker, num_gpus=1 if use_gpu else 0)
        created_at = time.time()
        dtype = compute_dtype(s.dtype, use_gpu)
        log.info("sensitivity: starting %d scoring worker(s) on %s (%s)", s.num_workers, "GPU" if use_gpu else "CPU",
                 dtype)
        return Workers([actor.remote(spec, use_gpu, dtype) for _ in range(s.num_workers)], created_at)

    def prepare(self, spec: Any, ctx: RunContext) -> Prepared:
        from core.data.calib_mm import model_calibration_rows
        from core.models import MODELS
        from jobs.sensitivity.search import search

        s, c = spec.search, spec.calib
        source = MODELS.get(spec.model.name)
        source.validate(spec.model)
        groups, shapes, excluded = _handles(spec)
        zero = {h: {cand: 0.0 for cand in s.candidates} for h in groups}
        search(_search_handles(groups, shapes, zero), s.effective_bits)  # an infeasible budget fails here
        rows = model_calibration_rows(c, source, spec.model)
        if s.num_workers > -(-len(rows) // s.batch_size):
            raise ConfigError("search.num_workers", f"{s.num_workers} workers but only "
                              f"{-(-len(rows) // s.batch_size)} calibration batches")
        log.info("sensitivity: %d handles over %d Linears, %d excluded (%s); %d x %d tokens", len(groups),
                 len(shapes), len(excluded), _summary(excluded), *rows.ids.shape)
        return Prepared(rows, groups, shapes, excluded)

    def run(self, spec: Any, ctx: RunContext, prepared: Prepared) -> dict[str, Any]:
        import numpy as np

        from jobs.sensitivity.report import write_report
        from jobs.sensitivity.scoring import group_scores, reduce_scores
        from jobs.sensitivity.search import search

        s, p, workers = spec.search, prepared, ctx.warm
        batches = p.rows.batches(s.batch_size)
        shards = [[batches[k] for k in part] for part in np.array_split(np.arange(len(batches)), s.num_workers)]
        names = sorted(p.shapes)
        calls = [(w, w.score.remote(shard, names, report=i == 0))  # the first worker's lines drive the bar
                 for i, (w, shard) in enumerate(zip(workers.actors, shards, strict=True))]
        with console.progress(r"scored (?P<done>\d+)/(?P<total>\d+) batches", "score", "batch", postfix=()):
            parts = _gather(calls)
        timing = _timing(parts, workers.created_at, time.time() - workers.created_at)
        lap("load", at=max(p["entered_at"] for p in parts))
        lap("work", at=max(p["entered_at"] + p["load_seconds"] for p in parts))
        log.info("scoring: %d worker(s) in %.1f s (slowest: load %.1f s, score %.1f s; start %.1f s)%s%s", len(parts),
                 timing["scan_seconds"], timing["load_seconds"], timing["score_seconds"], timing["start_seconds"],
                 f", GPU peak {timing['gpu_peak_gib']:.2f} GiB" if "gpu_peak_gib" in timing else "",
                 "; the model did not fit the GPU: blocks streamed" if any(p.get("streamed") for p in parts) else "")
        scores = group_scores(reduce_scores([part["scores"] for part in parts]), p.groups)
        handles = _search_handles(p.groups, p.shapes, scores)
        result = search(handles, s.effective_bits)
        header = {"scheme": list(s.candidates), "score": SCORES[s.score],
                  "model": spec.model.path or spec.model.name,
                  "calibration": {"dataset": spec.calib.path, "samples": len(p.rows),
                                  "max_samples": spec.calib.num_samples, "seq_len": spec.calib.seq_len,
                                  "batch_size": s.batch_size, "batches": len(batches)},
                  "budget": s.effective_bits, "excluded": p.excluded}
        lap("publish")
        out_dir = ctx.job_dir / "report"
        paths = write_report(out_dir, result, handles, header)
        ctx.run.log_artifacts(out_dir, "sensitivity")
        metrics = {"effective_bits": result.effective_bits, "total_score": result.total_score, **timing}
        metrics.update({f"worker{k}_gpu_peak_gib": part["gpu_peak_gib"] for k, part in enumerate(parts)
                        if "gpu_peak_gib" in part})
        ctx.run.log_metrics(metrics, step=0)
        log.info("search: %.4f effective bits (budget %g), total score %.4g; report %s", result.effective_bits,
                 s.effective_bits, result.total_score, out_dir)
        peaks = ",".join(f"{part['gpu_peak_gib']:.2f}" for part in parts if "gpu_peak_gib" in part)
        return {"effective_bits": round(result.effective_bits, 6), "total_score": result.total_score,
                "handles": len(p.groups), "report": str(out_dir), "files": len(paths),
                **{k: round(v, 2) for k, v in timing.items()}, **({"gpu_peak_gib_per_worker": peaks} if peaks else {})}
