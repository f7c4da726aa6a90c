"""The algorithm interface: prepare a block, observe its inputs (one or more passes), apply in place.

Driver protocol (the same for one worker or many; `stats` is a plain picklable object):

    algo = ALGORITHMS.get(name)(cfg)           # one instance per worker; reusable across blocks
    algo.prepare(block, fmt, run_block)          # validates shapes, resolves the block's wiring
    stats = Stats()
    for p in range(algo.n_passes):               # AWQ: 2 passes, others: 1
        # my_shard: hidden states entering the block, a list of [B, T, H] batches
        local = algo.observe_shard(block, my_shard, pass_idx=p, prior=stats)
        stats = stats.merged(reduce_stats(gather(local)))   # every worker gets the same reduced stats
    result = algo.apply(block, stats)            # one worker (or all: it is deterministic)

Send stats to the driver with `.to("cpu")`; `reduce_stats` sums/maxes per key (Stats.ops), or use
dist.all_reduce per key in sorted order. `apply` is deterministic given stats (same hardware), so every
data-parallel worker can apply it to its own replica and push its shard through the quantized block to
get the next block's inputs (no activations move); rank 0's BlockResult is the one to export.
Block-parallel: capture every block's inputs from the FP model, then quantize blocks on different
workers independently (faster, but later blocks do not see earlier blocks' quantization error).

`run_block(block, x, k) -> y` runs the block (or a copy of it) on hidden states x of the shard's batch k with
whatever else the model passes it for that batch (core/blocks/layerwise.py captures those from the model).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from core.blocks.mappings import find_linears, input_groups
from core.errors import ConfigError
from core.quant.act_quant import install_act_quant
from jobs.quantize.algorithms.metrics import layer_metrics
from jobs.quantize.algorithms.stats import Stats, reduce_stats
from kernels.quant import QuantFormat, check_group_size, get_op

RunBlock = Callable[[nn.Module, torch.Tensor, int], Any]
GRAM = "gram/"  # stats keys of the Gram matrices x^T x, per input group


@dataclass
class LayerQuant:
    """What an exporter writes for one Linear (core/quant/ct.py packs it with the compressed-tensors library)."""

    qweight: torch.Tensor  # int8 [out, in], signed range [-2^(b-1), 2^(b-1) - 1]
    scale: torch.Tensor  # float32 [out, n_groups]
    zero: torch.Tensor  # int8 [out, n_groups]; all 0 when symmetric
    fmt: QuantFormat


@dataclass
class BlockResult:
    layers: dict[str, LayerQuant] = field(default_factory=dict)  # names relative to the block
    # prev module name -> s: prev's output was divided by s and its consumers' weight columns multiplied
    # by s; already folded into the block's weights (norm weights changed too: export them).
    smoothing: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # per Linear, see metrics.py
    info: dict[str, Any] = field(default_factory=dict)  # algorithm specifics (AWQ alphas, skipped maps)


@dataclass
class AlgorithmConfig:
    # accumulation dtype of Gram matrices: float64 makes data-parallel sums exact (CPU default); on a GPU
    # "auto" is float32, fed by bf16 activations straight into a float32-output GEMM (exact products)
    stats_dtype: str = "auto"
    metrics: bool = True  # collect x^T x (when the algorithm does not need it anyway) for output errors

    def validate(self, field_name: str) -> None:
        if self.stats_dtype not in ("auto", "float32", "float64"):
            raise ConfigError(f"{field_name}.stats_dtype",
                              f"must be auto, float32 or float64, got {self.stats_dtype!r}")


class QuantAlgorithm:
    name: ClassVar[str] = ""
    Config: ClassVar[type[AlgorithmConfig]] = AlgorithmConfig
    n_passes: ClassVar[int] = 1
    needs_gram: ClassVar[bool] = False
    # MBQ: the driver runs a gradient pass first and hands per-block modality weights to token_masks
    needs_modality_grads: ClassVar[bool] = False
    # An FP forward of one block (its weights to the device included) relative to calibrating it: blocks
    # mode gives a later worker, which first runs the FP blocks before its own, a shorter run
    # (blockloop.balanced_runs). Measured on the 8B shape: GPTQ about 0.13 (benchmarks/RESULTS.md, run 6).
    fp_block_cost: ClassVar[float] = 0.15

    share: tuple[int, int] | None = None  # expert parallel: (this worker's index, workers): targets() is its share
    splits_by_linear = False  # each Linear solved from the reduced stats alone (GPTQ, RTN): expert parallel works

    def __init__(self, cfg: AlgorithmConfig | Mapping[str, Any] | None = None) -> None:
        self.cfg = build_config(self.Config, cfg, f"quant.{self.name}")

    def prepare(self, block: nn.Module, fmt: QuantFormat, run_block: RunBlock | None = None,
                formats: Mapping[str, QuantFormat | None] | None = None) -> None:
        """Validate the block for its formats (group sizes) and resolve its wiring; resets per-block state.
        `formats` (mixed precision): Linear name (relative to the block) -> its format, None = left FP;
        Linears it does not name use `fmt`."""
        self.fmt, self.run_block = fmt, run_block
        self.formats = dict(formats or {})
        linears = find_linears(block)
        for name, lin in self.targets(block).items():
            check_group_size(self.fmt_of(name), name, lin.in_features)
        self.groups = input_groups(block, list(linears))
        self.group_key = {name: g[0] for g in self.groups for name in g}

    def observe(
        self,
        block: nn.Module,
        x: torch.Tensor,
        stats: Stats | None = None,
        *,
        pass_idx: int = 0,
        prior: Stats | None = None,
        mask: torch.Tensor | None = None,
    ) -> Stats:
        """Accumulate this batch into `stats` (new if None) and return it. `prior`: reduced stats of the
        earlier passes (needed from pass 1 on). `mask` [B, T] bool drops padding tokens."""
        return self.observe_shard(block, [x], stats, pass_idx=pass_idx, prior=prior, masks=[mask])

    def observe_shard(
        self,
        block: nn.Module,
        xs: Sequence[torch.Tensor],
        stats: Stats | None = None,
        *,
        pass_idx: int = 0,
        prior: Stats | None = None,
        masks: Sequence[torch.Tensor | None] | None = None,
    ) -> Stats:
        """`observe` over a worker's whole shard (list of batches). Algorithms whose later passes are
        cheaper with all batches at hand (AWQ's grid search: quantize each candidate once, not once per
        batch) override `observe_pass_shard`."""
        if not 0 <= pass_idx < self.n_passes:
            raise ValueError(f"{self.name} has {self.n_passes} observe pass(es), got pass_idx={pass_idx}")
        stats = Stats() if stats is None else stats
        masks = list(masks) if masks is not None else [None] * len(xs)
        with torch.no_grad():
            if pass_idx == 0:
                for k, (x, mask) in enumerate(zip(xs, masks, strict=True)):
                    self._observe_inputs(block, x, k, stats, mask)
            else:
                # later passes read pass 0's per-channel statistics, not its Gram matrices (those wait for apply)
                prior = (prior or Stats()).to(_device(block), skip=GRAM)
                self.observe_pass_shard(block, xs, stats, pass_idx, prior, masks)
        return stats

    @torch.no_grad()
    def apply(self, block: nn.Module, stats: Stats) -> BlockResult:
        """Quantize the block's Linears in place (fake quant) from reduced stats of all passes."""
        result = BlockResult()
        self.quantize(block, stats.to(_device(block)), result)
        if self.fmt.act_bits:  # the block now behaves as deployed: later blocks see its real output
            install_act_quant(block, list(result.layers), self.fmt.act_bits)
        return result

    def token_masks(self, modality: torch.Tensor | None, weights: Mapping[str, Any] | None) -> torch.Tensor | None:
        """The per-token mask of one batch, from its modality codes [B, T] (core/data/calib_mm.py: 0 = padding)
        and this block's modality weights (MBQ only): None when every token counts once, else a bool mask
        dropping the padding. Subclasses may return float weights (AWQ's loss multiplies each token's error)."""
        if modality is None or bool((modality != 0).all()):
            return None
        return modality != 0

    # -- for subclasses ------------------------------------------------------------------------------

    def input_stats(self, key: str, x: torch.Tensor, stats: Stats) -> None:
        """Per shared-input group, x: [tokens, in_features] in the model's dtype. Extend with super() calls."""
        stats.add(f"tokens/{key}", torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device))
        if self.needs_gram or self.cfg.metrics:
            stats.add(f"{GRAM}{key}", gram_matrix(x, self.cfg.stats_dtype))

    def quantize(self, block: nn.Module, stats: Stats, result: BlockResult) -> None:
        """The algorithm proper: fill `result` (see commit); stats are on the block's device."""
        raise NotImplementedError

    def observe_pass(
        self, block: nn.Module, x: torch.Tensor, k: int, stats: Stats, pass_idx: int, prior: Stats,
        mask: torch.Tensor | None,
    ) -> None:
        raise NotImplementedError

    def observe_pass_shard(
        self, block: nn.Module, xs: Sequence[torch.Tensor], stats: Stats, pass_idx: int, prior: Stats,
        masks: Sequence[torch.Tensor | None],
    ) -> None:
        """A later pass over the whole shard; batch by batch unless the algorithm does better."""
        for k, (x, mask) in enumerate(zip(xs, masks, strict=True)):
            self.observe_pass(block, x, k, stats, pass_idx, prior, mask)

    def fmt_of(self, name: str) -> QuantFormat | None:
        return self.formats.get(name, self.fmt)

    def targets(self, block: nn.Module) -> dict[str, nn.Linear]:
        """The block's Linears to quantize (mixed precision leaves some FP); with a `share` (expert parallel),
        only this worker's share of them."""
        chosen = {n: lin for n, lin in find_linears(block).items() if self.fmt_of(n) is not None}
        return chosen if self.share is None else {n: chosen[n] for n in owned(list(chosen), *self.share)}

    @torch.no_grad()
    def adopt(self, block: nn.Module, merged: BlockResult) -> BlockResult:
        """Expert parallel: write every worker's solved Linears into this worker's block, exactly as commit() wrote
        its own (the same dequantization), so every worker holds the same quantized block."""
        dequantize = get_op("dequantize")
        device = _device(block)
        for name, layer in merged.layers.items():
            lin = block.get_submodule(name)
            deq = dequantize(layer.qweight.to(device), layer.scale.to(device), layer.zero.to(device).float(),
                             layer.fmt.group_size)
            lin.weight.copy_(deq.to(lin.weight.dtype))
        if self.fmt.act_bits:
            install_act_quant(block, list(merged.layers), self.fmt.act_bits)
        return merged

    def gram(self, stats: Stats, name: str) -> torch.Tensor | None:
        key = f"{GRAM}{self.group_key[name]}"
        return stats[key] if key in stats else None

    def forward(self, block: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
        """The block on batch `k`'s hidden states `x`."""
        if self.run_block is None:
            raise ValueError(f"{self.name}: prepare(block, fmt, run_block) needs run_block to observe")
        y = self.run_block(block, x, k)
        return y[0] if isinstance(y, tuple) else y

    @torch.no_grad()
    def commit(
        self, block: nn.Module, name: str, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
        result: BlockResult, gram: torch.Tensor | None,
    ) -> None:
        """Write dequantized weights in place, record the integers and the layer's error metrics."""
        lin, fmt = block.get_submodule(name), self.fmt_of(name)
        deq = get_op("dequantize")(q, scale, zero, fmt.group_size)
        result.metrics[name] = layer_metrics(lin.weight, deq, gram)
        lin.weight.copy_(deq.to(lin.weight.dtype))
        # to the host at once: a block's integers (an MoE's: every expert's) would crowd the device until exported
        result.layers[name] = LayerQuant(q.cpu(), scale.float().cpu(), zero.to(torch.int8).cpu(), fmt)

    def _observe_inputs(self, block: nn.Module, x: torch.Tensor, k: int, stats: Stats,
                        mask: torch.Tensor | None) -> None:
        def record(key: str, inp: torch.Tensor) -> None:
            self.input_stats(key, flatten_tokens(inp, mask), stats)

        with _input_hooks(block, [g[0] for g in self.groups], record):
            self.forward(block, x, k)


EXPERT_INDEX = re.compile(r"(?:^|\.)experts\.(\d+)\.")


def solve_unit(name: str) -> str | None:
    """The expert a Linear belongs to ("7" for mlp.experts.7.up_proj), None outside the routed experts: Linears of
    one unit are solved together, whichever worker solves them, so expert parallel equals one worker bit for bit."""
    found = EXPERT_INDEX.search(name)
    return found.group(1) if found else None


def owned(names: list[str], worker: int, workers: int) -> list[str]:
    """Worker `worker`'s share: experts round-robin by index, the other Linears round-robin in name order."""
    others = sorted(n for n in names if solve_unit(n) is None)
    return [n for n in names if (int(solve_unit(n)) if solve_unit(n) is not None else others.index(n)) % workers
            == worker]


def _device(block: nn.Module) -> torch.device:
    return next(block.parameters()).device


def gram_matrix(x: torch.Tensor, stats_dtype: str = "auto") -> torch.Tensor:
    """x^T x for x [tokens, d]. On CUDA, bf16/fp16 inputs go to a GEMM with float32 output: their
    products are exact in float32, so this equals upcasting first at a fraction of the cost."""
    dtype = getattr(torch, stats_dtype) if stats_dtype != "auto" else (
        torch.float32 if x.is_cuda else torch.float64)
    if dtype == torch.float32 and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):
        return torch.mm(x.T, x, out_dtype=torch.float32)
    xd = x.to(dtype)
    return xd.T @ xd


def flatten_tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[..., d] -> [tokens, d] in x's dtype, keeping only tokens where mask is True."""
    flat = x.reshape(-1, x.shape[-1])
    if mask is None:
        return flat
    keep = mask.reshape(-1).to(device=flat.device, dtype=torch.bool)
    if keep.numel() != flat.shape[0]:
        raise ValueError(f"mask has {keep.numel()} tokens, the input has {flat.shape[0]}")
    return flat[keep]


@contextmanager
def _input_hooks(block: nn.Module, names: list[str], record: Callable[[str, torch.Tensor], None]):
    handles = [
        block.get_submodule(name).register_forward_hook(lambda _m, args, _out, name=name: record(name, args[0]))
        for name in names
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def build_config(cls: type[AlgorithmConfig], cfg: Any, field_name: str) -> AlgorithmConfig:
    """A config dataclass from None, an instance, or a mapping (Hydra); unknown keys -> ConfigError."""
    if cfg is None:
        cfg = cls()
    elif not isinstance(cfg, cls):
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(cfg) - set(known))
        if unknown:
            raise ConfigError(field_name, f"unknown option(s) {', '.join(unknown)} (known: {', '.join(known)})")
        cfg = cls(**dict(cfg))
    cfg.validate(field_name)
    return cfg


def calibrate(algo: QuantAlgorithm, block: nn.Module, shards: Sequence[Iterable[torch.Tensor]]) -> Stats:
    """The driver protocol in one process: each shard (a re-iterable of batches) stands for a worker."""
    stats = Stats()
    for p in range(algo.n_passes):
        parts = []
        for shard in shards:
            parts.append(algo.observe_shard(block, list(shard), pass_idx=p, prior=stats))
        stats = stats.merged(reduce_stats(parts))
    return stats


def quantize_block(
    algo: QuantAlgorithm, block: nn.Module, fmt: QuantFormat, run_block: RunBlock | None,
    shards: Sequence[Iterable[torch.Tensor]],
) -> BlockResult:
    algo.prepare(block, fmt, run_block)
    return algo.apply(block, calibrate(algo, block, shards))
