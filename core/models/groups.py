"""Module groups of a model: vision, projector, language, embeddings, lm_head; a mixture-of-experts model also
has experts (routed and shared) and routers (listed only where a model has them).

The module paths of the vision tower, the projector and the language model come from the model's family
(core/models/families/: `Family.groups`). The embeddings and the lm_head are found for
every family through transformers' own `get_input_embeddings()` / `get_output_embeddings()`; within
the rest the longest matching module path decides (Qwen-VL's merger sits inside `model.visual`).
A model whose class has no entry is a causal LM (everything but embeddings/lm_head is `language`),
unless its config is image-text (or has a vision_config): then its vision/projector/language groups
are unknown, its other parameters land in `other`, and freezing them needs re: patterns.

The groups partition the parameters: each parameter (as `named_parameters()` lists it, shared
tensors once) is in exactly one group, so the group counts add up to the model's total.

Tied weights (qwen3_tiny, llava_tiny: lm_head.weight is embed_tokens.weight): the one tensor is
counted under `embeddings`; `tied` records {"lm_head": "embeddings"} and `shared["lm_head"]` names the
tensor, so freezing either group freezes it (core/models/freeze.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.models.families import CAUSAL_LM, GroupLayout, family_of
from core.models.inspect import numel

GROUPS = ("vision", "projector", "language", "embeddings", "lm_head")
MOE_GROUPS = ("experts", "routers")  # carved out of a mixture-of-experts model's language group (listed when found)
OTHER = "other"  # parameters no group claims (a family without a layout); empty for registered families
ROUTER_NAMES = ("gate", "router")


def moe_paths(model: Any) -> list[tuple[str, str]]:
    """(module path, group) of every MoE block's experts (routed and shared) and router: a module with an
    `experts` child and a `gate`/`router` child that is not a Linear of a dense MLP."""
    paths = []
    for name, module in model.named_modules():
        children = dict(module.named_children())
        router = next((r for r in ROUTER_NAMES if r in children), None)
        if "experts" not in children or router is None:
            continue
        prefix = f"{name}." if name else ""
        paths += [(f"{prefix}{child}", "experts") for child in children if "experts" in child]
        paths.append((f"{prefix}{router}", "routers"))
    return paths


def layout_of(model: Any) -> GroupLayout | None:
    """The family's layout; a text-only model's is CAUSAL_LM; None for an image-text model no family knows
    (transformers maps it to image-text-to-text, or its config has a vision_config: remote-code VLMs)."""
    from core.models.auto import is_image_text

    family = family_of(model)
    if family is not None:
        return family.groups
    multimodal = is_image_text(model.config) or getattr(model.config, "vision_config", None) is not None
    return None if multimodal else CAUSAL_LM


@dataclass
class ModuleGroups:
    model_class: str
    known: bool  # False: an image-text class without a layout (only embeddings/lm_head are found)
    names: dict[str, list[str]]  # group -> parameter names; groups in GROUPS order, then OTHER if any
    tied: dict[str, str] = field(default_factory=dict)  # {"lm_head": "embeddings"} when they share a tensor
    shared: dict[str, list[str]] = field(default_factory=dict)  # group -> tensors it shares, counted elsewhere

    def group_of(self) -> dict[str, str]:
        return {name: group for group, names in self.names.items() for name in names}

    def members(self, group: str) -> list[str]:
        """Every tensor the group uses: its own and the ones it shares (tied lm_head: embed_tokens.weight)."""
        return self.names.get(group, []) + self.shared.get(group, [])


def _param_ids(module: Any) -> set[int]:
    return {id(p) for p in module.parameters()} if module is not None else set()


def _under(name: str, path: str) -> bool:
    return path == "" or name == path or name.startswith(path + ".")


def module_groups(model: Any) -> ModuleGroups:
    layout = layout_of(model)
    paths = sorted([*(layout.paths() if layout else []), *moe_paths(model)], key=lambda pair: -len(pair[0]))
    embeddings = _param_ids(model.get_input_embeddings())
    lm_head = _param_ids(model.get_output_embeddings())
    names: dict[str, list[str]] = {g: [] for g in GROUPS}
    tied: dict[str, str] = {}
    shared: dict[str, list[str]] = {}
    for name, param in model.named_parameters():
        if id(param) in embeddings:
            group = "embeddings"
            if id(param) in lm_head:
                tied["lm_head"] = "embeddings"
                shared.setdefault("lm_head", []).append(name)
        elif id(param) in lm_head:
            group = "lm_head"
        else:
            group = next((g for path, g in paths if _under(name, path)), OTHER)
        names.setdefault(group, []).append(name)
    order = [*GROUPS, *MOE_GROUPS, OTHER]
    names = {g: names[g] for g in sorted(names, key=order.index)}
    return ModuleGroups(type(model).__name__, layout is not None, names, tied, shared)


def group_counts(model: Any, groups: ModuleGroups | None = None) -> dict[str, dict[str, int]]:
    """group -> {"params": full count (ZeRO-3 aware), "trainable": of those, requiring grad, "tensors": n}."""
    groups = groups or module_groups(model)
    params = dict(model.named_parameters())
    out = {}
    for group, names in groups.names.items():
        out[group] = {"params": sum(numel(params[n]) for n in names),
                      "trainable": sum(numel(params[n]) for n in names if params[n].requires_grad),
                      "tensors": len(names)}
    return out


def group_members(model: Any) -> dict[str, set[str]]:
    """group -> the names of its tensors, shared ones and every alias of a tied tensor included (the tied lm_head's
    `lm_head.weight` is in both `embeddings` and `lm_head`): what core/models/select.py matches group entries on."""
    groups = module_groups(model)
    canonical = {id(p): n for n, p in model.named_parameters()}
    aliases: dict[str, set[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(canonical[id(param)], set()).add(name)
    return {group: {alias for name in groups.members(group) for alias in aliases.get(name, {name})}
            for group in groups.names}
