"""AWQ (Lin et al. 2023): scale salient input channels up before quantizing, folding 1/s into the op that
produces the input, then shrink each group's range where that lowers the output error.

Two observe passes, both reducible by summation, so any number of workers gives the same choice:
  pass 0: per shared input, sum |x| and the token count (candidate scales s = mean|x|^alpha), and
          x^T x (for the clip search and metrics);
  pass 1: given the reduced pass-0 stats (`prior`), for every mapping and every alpha on the grid,
          the sum over tokens of |scope(x) - scope_fp(x)|^2 with only that mapping's Linears scaled
          and quantized, where scope is the smallest module holding them (attention for q/k/v, the MLP
          for gate/up, the Linear itself for o and down), as in llm-awq: every scope's inputs are captured
          in one block forward per batch and each candidate is quantized once per shard; a mixture-of-experts
          scope runs each expert on its routed tokens (its output error follows the router; pass 0's
          statistics came from every token). A lone Linear's error is linear in its inputs, so its scope
          keeps the Gram matrix of the tokens it saw instead of the tokens: |x D^T|^2 summed = tr(D G D^T)
          for D = candidate - original weight (an MoE's per-expert down_proj inputs would otherwise be the
          largest thing held on the device). `apply` picks the argmin.
The clip search (clip.py) needs no third pass: it uses x^T x, scaled by 1/s after smoothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from itertools import takewhile
from typing import Any

import torch
from torch import nn

from core.blocks.mappings import (
    ResolvedMapping,
    fold_scales,
    require_wiring,
    resolve_mappings,
)
from core.errors import ConfigError
from core.models.moe import routed_only
from jobs.quantize.algorithms.base import (
    AlgorithmConfig,
    BlockResult,
    QuantAlgorithm,
    RunBlock,
    flatten_tokens,
    gram_matrix,
)
from jobs.quantize.algorithms.clip import ClipSearchConfig, search_clip
from jobs.quantize.algorithms.stats import Stats
from kernels.quant import QuantFormat, get_op


@dataclass
class AWQConfig(ClipSearchConfig, AlgorithmConfig):
    n_grid: int = 20  # alphas k / n_grid, k = 0..n_grid-1; alpha 0 (s = 1) is plain RTN

    def validate(self, field_name: str) -> None:
        super().validate(field_name)
        self.validate_clip(field_name)
        if self.n_grid < 1:
            raise ConfigError(f"{field_name}.n_grid", f"must be >= 1, got {self.n_grid}")


class AWQ(QuantAlgorithm):
    name = "awq"
    Config = AWQConfig
    n_passes = 2
    needs_gram = True
    fp_block_cost = 0.05  # its grid searches make a calibrated block ~2.5 s on the 8B shape, an FP one ~0.13

    def prepare(self, block: nn.Module, fmt: QuantFormat, run_block: RunBlock | None = None,
                formats: Mapping[str, QuantFormat | None] | None = None) -> None:
        super().prepare(block, fmt, run_block, formats)
        self.family = require_wiring(block, self.name)

    def input_stats(self, key: str, x: torch.Tensor, stats: Stats) -> None:
        super().input_stats(key, x, stats)
        stats.add(f"absx/{key}", x.float().abs().sum(0).double())

    def observe_pass_shard(
        self, block: nn.Module, xs: Sequence[torch.Tensor], stats: Stats, pass_idx: int, prior: Stats,
        masks: Sequence[torch.Tensor | None],
    ) -> None:
        fake_quant = get_op("fake_quant")
        mappings = self._mappings(block)[0]
        scopes = {m.prev_name: scope_name(m.linear_names) for m in mappings}
        by_gram = {scopes[m.prev_name] for m in mappings if self._scored_by_gram(m)}
        # an expert's scope sees its routed tokens only, so per-token masks (MBQ) keep every token
        with routed_only(block, enabled=all(mask is None for mask in masks)):
            captured, grams = self._capture(block, set(scopes.values()) - by_gram, by_gram, xs, masks)
            for m in mappings:
                scope = scopes[m.prev_name]
                if scope in by_gram:
                    losses = self._gram_losses(m, prior, grams.pop(scope), fake_quant)
                else:  # FP calls: the block is restored after each mapping
                    losses = self._grid_losses(block, m, prior, captured.pop(scope), masks, fake_quant)
                stats.add(f"awq_loss/{m.prev_name}", losses)

    def _scored_by_gram(self, m: ResolvedMapping) -> bool:
        """A lone Linear scored without activation fake quant: its output error is a quadratic form of its Gram."""
        return len(m.linears) == 1 and not self.fmt.act_bits

    def _grid_losses(self, block: nn.Module, m: ResolvedMapping, prior: Stats, calls: list[tuple | None],
                     masks: Sequence[torch.Tensor | None], fake_quant: Any) -> torch.Tensor:
        """Per grid point, the scope's squared output error with only `m`'s Linears scaled and quantized."""
        scope = block.get_submodule(scope_name(m.linear_names))
        formats = [self.fmt_of(name) for name in m.linear_names]
        losses = torch.zeros(self.cfg.n_grid, dtype=torch.float64, device=m.linears[0].weight.device)
        with _originals_kept(m.linears) as originals:
            for k, s in enumerate(self._candidates(prior, m)):
                for lin, w, fmt in zip(m.linears, originals, formats, strict=True):
                    lin.weight.copy_(_candidate(w.to(lin.weight.device, non_blocking=True), s, fmt, fake_quant))
                with self.scoring(m, s):
                    for call, mask in zip(calls, masks, strict=True):
                        if call is not None:  # None: an expert no token of this batch was routed to
                            args, kwargs, y_ref = call
                            losses[k] += _sse(_first(scope(*args, **kwargs)), y_ref, mask)
        return losses

    def _gram_losses(self, m: ResolvedMapping, prior: Stats, gram: torch.Tensor | None,
                     fake_quant: Any) -> torch.Tensor:
        """`_grid_losses` of a lone Linear from the Gram matrix G of its inputs: sum over candidates' D of
        tr(D G D^T), D the candidate's weight minus the original (zero where no token reached the Linear)."""
        w, fmt = m.linears[0].weight, self.fmt_of(m.linear_names[0])
        losses = torch.zeros(self.cfg.n_grid, dtype=torch.float64, device=w.device)
        if gram is None:
            return losses
        for k, s in enumerate(self._candidates(prior, m)):
            diff = _candidate(w, s, fmt, fake_quant).to(gram.dtype) - w.to(gram.dtype)
            losses[k] = ((diff @ gram) * diff).sum().double()
        return losses

    def _capture(self, block: nn.Module, scopes: set[str], by_gram: set[str], xs: Sequence[torch.Tensor],
                 masks: Sequence[torch.Tensor | None]) -> tuple[dict[str, list], dict[str, torch.Tensor | None]]:
        """From one block forward per batch: every scope's call (args, kwargs) and FP output per batch (None where a
        batch did not call it), and for the `by_gram` scopes (lone Linears) the Gram matrix of their inputs, each
        token weighted by its mask."""
        captured: dict[str, list] = {name: [None] * len(xs) for name in scopes}
        grams: dict[str, torch.Tensor | None] = dict.fromkeys(by_gram)
        batch = [0]

        def call_hook(name: str):
            def hook(_module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
                captured[name][batch[0]] = (args, kwargs, _first(out))
            return hook

        def gram_hook(name: str):
            def hook(_module: nn.Module, args: tuple, _out: Any) -> None:
                g = gram_matrix(_weighted_tokens(args[0], masks[batch[0]]), self.cfg.stats_dtype)
                grams[name] = g if grams[name] is None else grams[name].add_(g)
            return hook

        handles = [block.get_submodule(name).register_forward_hook(call_hook(name), with_kwargs=True)
                   for name in scopes]
        handles += [block.get_submodule(name).register_forward_hook(gram_hook(name)) for name in by_gram]
        try:
            for k, x in enumerate(xs):
                batch[0] = k
                self.forward(block, x, k)
        finally:
            for handle in handles:
                handle.remove()
        return captured, grams

    def quantize(self, block: nn.Module, stats: Stats, result: BlockResult) -> None:
        input_scale = self._fold_best_scales(block, stats, result)
        quantize_weight = get_op("quantize_weight")
        for name, lin in self.targets(block).items():
            gram, fmt = self.gram(stats, name), self.fmt_of(name)
            s = input_scale.get(self.group_key[name])
            if s is not None:  # inputs are now x / s
                gram = gram / (s[:, None] * s[None, :]).to(gram.dtype)
            clip = 1.0
            if self.cfg.clips(name):
                clip = search_clip(lin.weight, gram, fmt, self.cfg.clip_grid, self.cfg.max_shrink)
            q, scale, zero = quantize_weight(lin.weight, fmt, clip)
            self.commit(block, name, q, scale, zero, result, gram)

    def _fold_best_scales(self, block: nn.Module, stats: Stats, result: BlockResult) -> dict[str, torch.Tensor]:
        """Fold every mapping's best scale before quantizing anything: v_proj and up_proj are both a
        consumer (columns scaled) and a producer (rows scaled). Returns input-group key -> s."""
        mappings, skipped = self._mappings(block)
        result.info.update(alpha={}, loss_vs_rtn={}, skipped_mappings=skipped)
        input_scale: dict[str, torch.Tensor] = {}
        for m in mappings:
            if f"awq_loss/{m.prev_name}" not in stats:
                raise ValueError("awq: apply needs the merged stats of both observe passes (see base.py)")
            losses = stats[f"awq_loss/{m.prev_name}"]
            best = int(torch.argmin(losses))
            s = self._candidates(stats, m)[best]
            fold_scales(m, s)
            result.smoothing[m.prev_name] = s
            input_scale[m.key] = s
            result.info["alpha"][m.prev_name] = best / self.cfg.n_grid
            result.info["loss_vs_rtn"][m.prev_name] = (losses[best] / losses[0].clamp_min(1e-30)).item()
        return input_scale

    def _mappings(self, block: nn.Module) -> tuple[list[ResolvedMapping], list[str]]:
        return resolve_mappings(block, self.family)

    def scoring(self, m: ResolvedMapping, s: torch.Tensor) -> AbstractContextManager:
        """Context of scoring one candidate scale `s` of mapping `m` (subclasses: activation fake quant)."""
        return nullcontext()

    def _candidates(self, stats: Stats, m: ResolvedMapping) -> torch.Tensor:
        """[n_grid, in] scales mean|x|^alpha, normalized so that max * min = 1 (as llm-awq)."""
        key = m.key
        mean = (stats[f"absx/{key}"] / stats[f"tokens/{key}"]).float()
        alphas = torch.arange(self.cfg.n_grid, device=mean.device, dtype=torch.float32) / self.cfg.n_grid
        s = mean[None, :].pow(alphas[:, None]).clamp(min=1e-4)
        return s / (s.amax(1, keepdim=True) * s.amin(1, keepdim=True)).sqrt()


def scope_name(linear_names: Sequence[str]) -> str:
    """The smallest module holding all of `linear_names` (a lone Linear is its own scope)."""
    if len(linear_names) == 1:
        return linear_names[0]
    parts = zip(*(name.split(".") for name in linear_names), strict=False)
    return ".".join(p[0] for p in takewhile(lambda p: len(set(p)) == 1, parts))


def _candidate(w: torch.Tensor, s: torch.Tensor, fmt: QuantFormat | None, fake_quant: Any) -> torch.Tensor:
    """The weight as scored for scales `s`: columns scaled, quantized, unscaled (an FP consumer of a mixed recipe
    keeps its function exactly)."""
    scaled = w.float() * s
    return ((fake_quant(scaled, fmt) if fmt else scaled) / s).to(w.dtype)


# a mapping's original weights bigger than this wait in host memory while its candidates are scored (an MoE's
# gate/up experts); smaller ones stay on the device, where restoring them costs no transfer
HOST_ORIGINALS_BYTES = 256 * 2**20


@contextmanager
def _originals_kept(linears: Sequence[nn.Linear]) -> Iterator[list[torch.Tensor]]:
    """Copies of the Linears' weights, written back into them on exit."""
    weights = [lin.weight for lin in linears]
    on_host = weights[0].is_cuda and sum(w.numel() * w.element_size() for w in weights) > HOST_ORIGINALS_BYTES
    originals = [torch.empty_like(w, device="cpu", pin_memory=True).copy_(w) if on_host else w.detach().clone()
                 for w in weights]
    try:
        yield originals
    finally:
        for w, original in zip(weights, originals, strict=True):
            w.copy_(original)


def _weighted_tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x as [tokens, d], each token scaled by sqrt of its mask weight (a Gram matrix then weights it by the mask);
    a bool mask drops tokens. A mask covers the batch's tokens; a routed expert's input (fewer rows) has none."""
    flat = x.reshape(-1, x.shape[-1])
    if mask is None or mask.numel() != flat.shape[0]:
        return flat
    if mask.dtype == torch.bool:
        return flatten_tokens(flat, mask)
    return (flat.float() * mask.reshape(-1, 1).to(flat.device).sqrt()).to(flat.dtype)


def _first(y: Any) -> torch.Tensor:
    return y[0] if isinstance(y, tuple) else y


def _sse(y: torch.Tensor, y_ref: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Squared error summed over tokens; `mask` [B, T] drops (0/False) or weights (float, MBQ) each token."""
    err = (y.float() - y_ref.float()).square().sum(-1).reshape(-1)  # per token ([B, T] or an MoE's [B * T])
    if mask is not None:
        err = err * mask.reshape(-1).to(err.device, err.dtype)
    return err.sum().double()
