"""GPTQ (Frantar et al. 2022): quantize columns one at a time and spread each column's error over the
not-yet-quantized columns with the inverse Hessian H = 2 X^T X / n of the layer's inputs.

Stats: per shared input, x^T x and the token count (sums), so shards reduce exactly. All Hessians come
from the FP block in one pass (the paper's setting); error from earlier blocks is compensated when
the driver feeds each block the outputs of the already-quantized previous block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.errors import ConfigError
from jobs.quantize.algorithms.base import AlgorithmConfig, BlockResult, QuantAlgorithm, solve_unit
from jobs.quantize.algorithms.clip import ClipSearchConfig, search_clip
from jobs.quantize.algorithms.gptq_solve import upper_inverse_factor_
from jobs.quantize.algorithms.stats import Stats
from kernels.quant import QuantFormat, get_op


@dataclass
class GPTQConfig(ClipSearchConfig, AlgorithmConfig):
    percdamp: float = 0.01  # damping added to diag(H), as a fraction of mean(diag(H))
    blocksize: int = 128  # columns per lazy-batch update (with groups: one batch per group)
    # Process columns by descending diag(H). With groups, scales stay on contiguous column groups,
    # computed before the updates (llm-compressor's "static" order, its default), so no g_idx is needed
    # on export. On the 8B-shaped benchmark it lowered block errors to the peer's (benchmarks/RESULTS.md).
    act_order: bool = True
    # ClipSearchConfig: each group's static range shrunk where RTN's output error is lower (AWQ's clip
    # search on the same x^T x). On Gaussian weights it cut GPTQ's output error ~30%; `clip=false` is
    # llm-compressor's default min/max.

    def validate(self, field_name: str) -> None:
        super().validate(field_name)
        self.validate_clip(field_name)
        if not 0 < self.percdamp <= 1:
            raise ConfigError(f"{field_name}.percdamp", f"must be in (0, 1], got {self.percdamp}")
        if self.blocksize < 1:
            raise ConfigError(f"{field_name}.blocksize", f"must be >= 1, got {self.blocksize}")


class GPTQ(QuantAlgorithm):
    name = "gptq"
    Config = GPTQConfig
    needs_gram = True
    splits_by_linear = True

    def quantize(self, block: nn.Module, stats: Stats, result: BlockResult) -> None:
        linears = self.targets(block)
        for group in self.groups:
            gram, tokens = self.gram(stats, group[0]), stats.values.get(f"tokens/{group[0]}")
            if gram is None or tokens is None or tokens.item() == 0:
                raise ValueError(f"gptq: no calibration inputs were observed for {group[0]!r}")
            # Linears sharing an input share H, and GPTQ treats rows independently: one solve for all
            # of one format (q/k/v, gate/up) is the same math with a third of the column loops; an MoE's
            # experts (all fed every token) share H too, but each expert is its own solve (solve_unit)
            by_unit: dict[tuple[QuantFormat, str | None], list[str]] = {}
            for name in group:
                if name in linears:
                    by_unit.setdefault((self.fmt_of(name), solve_unit(name)), []).append(name)
            for (fmt, _), names in by_unit.items():
                self._solve(block, names, [linears[n].weight for n in names], gram, tokens, fmt, result)

    def _solve(self, block: nn.Module, names: list[str], weights: list[torch.Tensor], gram: torch.Tensor,
               tokens: torch.Tensor, fmt: QuantFormat, result: BlockResult) -> None:
        cfg = self.cfg
        hessian = LazyHessian(gram, tokens)
        clip = self._clip(names, weights, gram, fmt)
        q, scale, zero = gptq_quantize(torch.cat(weights), hessian, fmt, cfg.percdamp, cfg.blocksize, cfg.act_order,
                                       clip)
        rows = [w.shape[0] for w in weights]
        for name, qi, si, zi in zip(names, q.split(rows), scale.split(rows), zero.split(rows), strict=True):
            self.commit(block, name, qi, si.float(), zi.float(), result, gram)

    def _clip(self, names: list[str], weights: list[torch.Tensor], gram: torch.Tensor,
              fmt: QuantFormat) -> torch.Tensor | float:
        """Per (row, group) range ratios of the concatenated weights: searched, or 1 for skipped Linears."""
        if not any(self.cfg.clips(n) for n in names):
            return 1.0
        groups = weights[0].shape[1] // (fmt.group_size or weights[0].shape[1])
        return torch.cat([
            search_clip(w, gram, fmt, self.cfg.clip_grid, self.cfg.max_shrink) if self.cfg.clips(n)
            else torch.ones(w.shape[0], groups, device=w.device) for n, w in zip(names, weights, strict=True)])


class LazyHessian:
    """H = 2 * gram / tokens (or H = matrix as given), formed on demand, in a column order, instead of kept:
    the n x n matrices of down_proj in an 8B model are 0.8 GB each in float32.

    float32 math; from float64 stats this rounding also makes the result independent of how the data was
    sharded (sums that differ in the last float64 bits round to the same float32)."""

    def __init__(self, matrix: torch.Tensor, tokens: torch.Tensor | None = None) -> None:
        self.matrix, self.tokens = matrix, tokens

    def _scaled(self, m: torch.Tensor) -> torch.Tensor:  # m: a fresh copy, scaled in place
        return m if self.tokens is None else m.mul_(2).div_(self.tokens.to(m.dtype)).float()

    def diag(self) -> torch.Tensor:
        return self._scaled(torch.diag(self.matrix))  # a copy (torch.diagonal would be the view)

    def fill_(self, out: torch.Tensor, order: torch.Tensor, rows: int = 1024) -> torch.Tensor:
        """out := H[order][:, order], a panel of `rows` rows at a time: no second n x n matrix."""
        for r in range(0, out.shape[0], rows):
            picked = self.matrix.index_select(0, order[r:r + rows]).index_select(1, order)
            out[r:r + rows] = self._scaled(picked)
        return out


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor | LazyHessian,
    fmt: QuantFormat,
    percdamp: float = 0.01,
    blocksize: int = 128,
    act_order: bool = False,
    clip: float | torch.Tensor = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(int8 q [out, in], scale, zero [out, n_groups]) for one Linear; math in the Hessian's dtype. `clip`
    (scalar or [out, n_groups]) shrinks each group's min/max range.

    H is formed from `hessian` straight into the buffer that becomes its inverse factor: besides its source,
    one n x n matrix is alive."""
    lazy = hessian if isinstance(hessian, LazyHessian) else LazyHessian(hessian)
    diag = lazy.diag()
    W = weight.detach().to(diag.dtype, copy=True)
    del weight
    rows, cols = W.shape
    size = fmt.group_size or cols
    dead = diag == 0  # inputs that were always 0: any weight works, use 0
    perm = torch.argsort(diag, descending=True) if act_order else None
    W[:, dead] = 0
    # Static qparams for per-channel, and for groups under act_order (contiguous groups on export).
    static = fmt.group_size is None or act_order
    compute_qparams = get_op("compute_qparams")
    if static:
        scale, zero = compute_qparams(W, fmt.weight_bits, fmt.group_size, fmt.symmetric, clip)
    else:
        scale = W.new_zeros(rows, cols // size)
        zero = W.new_zeros(rows, cols // size)
        blocksize = size  # one lazy batch per group: its params come from the weights updated so far
    hinv = _inverse_hessian_factor(lazy, dead, perm, percdamp, W.shape[1], diag.dtype)
    if perm is not None:
        W = W[:, perm]
    else:
        perm = torch.arange(cols, device=W.device)
    group_of = perm // size
    run_batch = get_op("gptq_block")
    Q = torch.zeros(rows, cols, dtype=torch.int8, device=W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        if static:
            cols_scale, cols_zero = scale[:, group_of[i1:i2]], zero[:, group_of[i1:i2]]
        else:
            g = i1 // size
            group_clip = clip[:, g:g + 1] if isinstance(clip, torch.Tensor) else clip
            s, z = compute_qparams(W[:, i1:i2], fmt.weight_bits, None, fmt.symmetric, group_clip)
            scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
            cols_scale, cols_zero = s.expand(-1, i2 - i1), z.expand(-1, i2 - i1)
        Q[:, i1:i2], err = run_batch(W[:, i1:i2], hinv[i1:i2, i1:i2], cols_scale, cols_zero, fmt.weight_bits)
        W[:, i2:] -= err @ hinv[i1:i2, i2:]  # lazy batch: the rest of the row gets this batch's error
    return (Q[:, torch.argsort(perm)] if act_order else Q), scale, zero


def _inverse_hessian_factor(hessian: LazyHessian, dead: torch.Tensor, perm: torch.Tensor | None,
                            percdamp: float, n: int, dtype: torch.dtype) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp I)^-1 in the column order `perm`, damp = percdamp * mean(diag H),
    10x more per retry if H is too ill-posed; dead inputs' diagonal set to 1. One n x n buffer beside the
    Gram matrix (gptq_solve.py: the library route held 3-4)."""
    order = perm if perm is not None else torch.arange(n, device=dead.device)
    order = order.flip(0)  # the factor is computed on the reversed matrix (gptq_solve.py)
    buf = torch.empty(n, n, dtype=dtype, device=dead.device)
    for attempt in range(6):
        H = hessian.fill_(buf, order)
        d = dead[order]
        H[d, d] = 1
        H.diagonal().add_(percdamp * 10**attempt * H.diagonal().mean())
        if upper_inverse_factor_(H):
            return H
    raise RuntimeError("gptq: the Hessian is not positive definite even with 10^5 x damping")
