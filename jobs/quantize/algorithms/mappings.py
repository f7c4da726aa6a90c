"""The one place that knows a decoder block's wiring: which Linears share an input and which op produces
that input (a norm, or a Linear whose output reaches them through a linear map only).

AWQ/SmoothQuant fold a per-input-channel scale s into that producer (divide its output by s) and
multiply the consumers' weight columns by s, which leaves the FP function unchanged. GPTQ/RTN only use
the shared-input groups, to compute one Gram matrix per input instead of one per Linear.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.errors import ConfigError


@dataclass(frozen=True)
class Mapping:
    prev: str  # module whose output is the shared input
    linears: tuple[str, ...]  # Linears reading it


@dataclass(frozen=True)
class Family:
    name: str
    block_classes: tuple[str, ...]
    mappings: tuple[Mapping, ...]


_LLAMA = (
    Mapping("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    # attention output is a token mix of v rows: scaling v's output channels scales o's inputs
    Mapping("self_attn.v_proj", ("self_attn.o_proj",)),
    Mapping("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    # down's input is act(gate) * up, linear in up's output
    Mapping("mlp.up_proj", ("mlp.down_proj",)),
)
FAMILIES: dict[str, Family] = {
    "llama": Family(
        "llama", ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer"), _LLAMA
    ),
}


@dataclass(frozen=True)
class ResolvedMapping:
    prev_name: str
    prev: nn.Module
    linear_names: tuple[str, ...]
    linears: tuple[nn.Linear, ...]

    @property
    def key(self) -> str:
        return self.linear_names[0]  # the input-group key used in stats

    @property
    def prev_is_norm(self) -> bool:
        return not isinstance(self.prev, nn.Linear)


def find_linears(block: nn.Module) -> dict[str, nn.Linear]:
    return {name: mod for name, mod in block.named_modules() if isinstance(mod, nn.Linear)}


def detect_family(block: nn.Module) -> Family | None:
    """By block class name, else by module names (a renamed class with the same wiring)."""
    cls = type(block).__name__
    for family in FAMILIES.values():
        if cls in family.block_classes:
            return family
    names = {name for name, _ in block.named_modules()}
    for family in FAMILIES.values():
        if all(m.prev in names and set(m.linears) <= names for m in family.mappings):
            return family
    return None


def require_family(block: nn.Module, algorithm: str) -> Family:
    family = detect_family(block)
    if family is None:
        known = ", ".join(f"{f.name} ({'/'.join(f.block_classes)})" for f in FAMILIES.values())
        raise ConfigError("quant.algorithm", f"{algorithm} needs the wiring of block {type(block).__name__!r}, "
                          f"which matches no known family (known: {known})")
    return family


def resolve_mappings(block: nn.Module, family: Family) -> tuple[list[ResolvedMapping], list[str]]:
    """Mappings that can be folded in this block, and why the others cannot (e.g. GQA for v -> o)."""
    resolved, skipped = [], []
    for m in family.mappings:
        prev = block.get_submodule(m.prev)
        linears = tuple(block.get_submodule(n) for n in m.linears)
        width = linears[0].in_features
        if isinstance(prev, nn.Linear):
            ok = prev.out_features == width  # GQA: v has fewer outputs than o has inputs
        else:
            ok = getattr(prev, "weight", None) is not None and tuple(prev.weight.shape) == (width,)
        if ok:
            resolved.append(ResolvedMapping(m.prev, prev, m.linears, linears))
        else:
            skipped.append(f"{m.prev} -> {', '.join(m.linears)}: output width does not match {width} inputs")
    return resolved, skipped


def input_groups(block: nn.Module, linear_names: list[str]) -> list[tuple[str, ...]]:
    """Linears grouped by shared input (family wiring), the rest one per group; first name is the key."""
    family = detect_family(block)
    groups = [m.linears for m in family.mappings] if family else []
    groups = [g for g in groups if set(g) <= set(linear_names)]
    covered = {n for g in groups for n in g}
    return groups + [(n,) for n in linear_names if n not in covered]


@torch.no_grad()
def fold_scales(mapping: ResolvedMapping, scales: torch.Tensor) -> None:
    """prev output /= s, consumer weight columns *= s: same FP function, rescaled input channels."""
    s = scales.float()
    prev = mapping.prev
    if isinstance(prev, nn.Linear):
        prev.weight.copy_((prev.weight.float() / s[:, None]).to(prev.weight.dtype))
    else:
        prev.weight.copy_((prev.weight.float() / s).to(prev.weight.dtype))
    if getattr(prev, "bias", None) is not None:
        prev.bias.copy_((prev.bias.float() / s).to(prev.bias.dtype))
    for lin in mapping.linears:
        lin.weight.copy_((lin.weight.float() * s).to(lin.weight.dtype))
