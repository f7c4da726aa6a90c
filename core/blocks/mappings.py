"""Folding scales along a decoder block's wiring (the family's mappings: core/models/families/).

AWQ/SmoothQuant fold a per-input-channel scale s into the op producing a shared input (divide its output by s)
and multiply the consumers' weight columns by s, which leaves the FP function unchanged. GPTQ/RTN only use the
shared-input groups, to compute one Gram matrix per input instead of one per Linear.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from core.errors import ConfigError
from core.models.families import Family, Mapping, all_families, wiring_of


@dataclass(frozen=True)
class ResolvedMapping:
    prev_name: str
    prev: nn.Module
    linear_names: tuple[str, ...]
    linears: tuple[nn.Linear, ...]
    # the producer's output rows that make the input (a fused Linear's tail)
    rows: slice = field(default_factory=lambda: slice(None))
    norm_offset: float = 0.0  # a norm that scales by (offset + weight)
    passive: tuple[nn.Module, ...] = ()  # scaled like the linears, never quantized (MoE routers)

    @property
    def key(self) -> str:
        return self.linear_names[0]  # the input-group key used in stats

    @property
    def prev_is_norm(self) -> bool:
        return not isinstance(self.prev, nn.Linear)


def find_linears(block: nn.Module) -> dict[str, nn.Linear]:
    return {name: mod for name, mod in block.named_modules() if isinstance(mod, nn.Linear)}


def require_wiring(block: nn.Module, algorithm: str) -> Family:
    """The family wiring `algorithm` folds scales along, or a one-line error naming the algorithm and block."""
    family = wiring_of(block)
    if family is None or not family.mappings:
        known = ", ".join(f.name for f in all_families() if f.mappings)
        raise ConfigError("quant.algorithm", f"{algorithm} needs the wiring of block {type(block).__name__!r}, "
                          f"which matches no family with mappings (known: {known}); gptq and rtn need none")
    return family


EXPERT = "{e}"


def _experts(pattern: str, names: set[str]) -> list[str]:
    """The expert indices for which `pattern` ("mlp.experts.{e}.up_proj") names a module of the block."""
    head, _, tail = pattern.partition(EXPERT)
    found = {n[len(head):len(n) - len(tail)] for n in names if n.startswith(head) and n.endswith(tail)}
    return sorted((i for i in found if i.isdigit()), key=int)


def _spread(group: tuple[str, ...], names: set[str]) -> tuple[str, ...]:
    """Names with "{e}" replaced by every expert's index (expert by expert), then the plain ones."""
    patterns = [n for n in group if EXPERT in n]
    experts = _experts(patterns[0], names) if patterns else []
    return tuple(p.replace(EXPERT, e) for e in experts for p in patterns) + tuple(n for n in group if EXPERT not in n)


def block_mappings(block: nn.Module, family: Family) -> list[Mapping]:
    """The family's mappings as they apply to this block: "{e}" expanded (a per-expert producer gives one mapping
    per expert; per-expert consumers all join their mapping), mappings naming modules it lacks left out."""
    names = {name for name, _ in block.named_modules()}
    out = []
    for m in family.mappings:
        if EXPERT in m.prev:
            variants = [Mapping(m.prev.replace(EXPERT, e), tuple(n.replace(EXPERT, e) for n in m.linears),
                                m.prev_rows, tuple(n.replace(EXPERT, e) for n in m.passive))
                        for e in _experts(m.prev, names)]
        else:
            variants = [Mapping(m.prev, _spread(m.linears, names), m.prev_rows, _spread(m.passive, names))]
        out += [v for v in variants if v.linears and {v.prev, *v.linears, *v.passive} <= names]
    return out


def resolve_mappings(block: nn.Module, family: Family) -> tuple[list[ResolvedMapping], list[str]]:
    """Mappings that can be folded in this block, and why the others cannot (e.g. GQA for v -> o)."""
    resolved, skipped = [], []
    for m in block_mappings(block, family):
        prev = block.get_submodule(m.prev)
        linears = tuple(block.get_submodule(n) for n in m.linears)
        width = linears[0].in_features
        rows = slice(None)
        if isinstance(prev, nn.Linear) and m.prev_rows == "tail":
            rows = slice(prev.out_features - width, None)
            ok = prev.out_features > width and not _gqa_qkv(block, m.prev)
        elif isinstance(prev, nn.Linear):
            ok = prev.out_features == width  # GQA: v has fewer outputs than o has inputs
        else:
            ok = getattr(prev, "weight", None) is not None and tuple(prev.weight.shape) == (width,)
        if ok:
            resolved.append(ResolvedMapping(m.prev, prev, m.linears, linears, rows,
                                            0.0 if isinstance(prev, nn.Linear) else family.norm_offset,
                                            tuple(block.get_submodule(n) for n in m.passive)))
        else:
            skipped.append(f"{m.prev} -> {', '.join(m.linears)}: output width does not match {width} inputs")
    return resolved, skipped


def _gqa_qkv(block: nn.Module, prev: str) -> bool:
    """A fused qkv under GQA: its v rows are fewer than o's inputs, so its tail is not v alone."""
    config = getattr(block.get_submodule(prev.rpartition(".")[0]), "config", None)
    heads, kv = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    return prev.endswith("qkv_proj") and kv not in (None, heads)


def input_groups(block: nn.Module, linear_names: list[str]) -> list[tuple[str, ...]]:
    """Linears grouped by shared input (family wiring), the rest one per group; first name is the key."""
    family = wiring_of(block)
    groups = [m.linears for m in block_mappings(block, family)] if family else []
    groups = [g for g in groups if set(g) <= set(linear_names)]
    covered = {n for g in groups for n in g}
    return groups + [(n,) for n in linear_names if n not in covered]


def serving_sets(block: nn.Module, linear_names: list[str]) -> list[tuple[str, ...]]:
    """The block's Linears a serving engine runs as one GEMM (its family's `serving_fused`), each set needing one
    format: "{e}" expanded to every expert of the block (one set for all of them); sets naming Linears the block
    lacks (DeepSeek-V3's dense blocks have no experts) do not apply."""
    family = wiring_of(block)
    names = set(linear_names)
    sets = [_spread(s, names) for s in (family.serving_fused if family else ())]
    return [s for s in sets if s and set(s) <= names]


@torch.no_grad()
def fold_scales(mapping: ResolvedMapping, scales: torch.Tensor) -> None:
    """prev output /= s, consumer weight columns *= s: same FP function, rescaled input channels."""
    s = scales.float()
    prev = mapping.prev
    if isinstance(prev, nn.Linear):
        rows = prev.weight[mapping.rows]
        rows.copy_((rows.float() / s[:, None]).to(rows.dtype))
    else:  # a norm scaling by (offset + weight): offset + w' = (offset + w) / s
        w = prev.weight
        w.copy_(((mapping.norm_offset + w.float()) / s - mapping.norm_offset).to(w.dtype))
    if getattr(prev, "bias", None) is not None:
        bias = prev.bias[mapping.rows]
        bias.copy_((bias.float() / s).to(bias.dtype))
    for lin in (*mapping.linears, *mapping.passive):
        lin.weight.copy_((lin.weight.float() * s).to(lin.weight.dtype))
