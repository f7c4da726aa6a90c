"""Tensor names as checkpoints on disk have them, which can differ from the names in memory.

Transformers 5 renames some checkpoints' keys on load (a LLaVA checkpoint's `language_model.model.layers.*` is
`model.language_model.layers.*` in memory) and reverts the renames in `save_pretrained`; its conversion mapping is the
one source of those renames, used here both ways. Fused mixture-of-experts tensors are split per expert by
core/models/moe.py, whose per-expert names some families still rename (Mixtral's `block_sparse_moe.experts.N.w1`):
the family registry's `disk_names`, full names on either side, applied before transformers' renames. Serving
engines and compressed-tensors read the names on disk, so exports use them, for tensors and for the quantization
config's targets and ignore list alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.models.families import family_of


def _renamings(model: Any) -> list[Any]:
    """Transformers' key renames for `model` (load direction), without the prefix changes it applies only to
    checkpoints that carry a prefix (a model built from its config has none to revert)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import PrefixChange, WeightRenaming

    transforms = getattr(model, "_weight_conversions", None) or get_model_conversion_mapping(model, add_legacy=False)
    return [t for t in transforms if isinstance(t, WeightRenaming) and not isinstance(t, PrefixChange)]


def _apply(name: str, renamings: list[Any]) -> str:
    for renaming in renamings:
        name, _ = renaming.rename_source_key(name)
    return name


def to_disk(model: Any) -> Callable[[str], str]:
    """In-memory tensor or module name -> its name on disk, as `save_pretrained` would write it."""
    family = family_of(model)
    reverse = [t.reverse_transform() for t in reversed(_renamings(model))]
    rename_experts = family.to_disk if family is not None else (lambda name: name)
    return lambda name: _apply(rename_experts(name), reverse)


def from_disk(model: Any) -> Callable[[str], str]:
    """A name on disk -> the name in `model` (the inverse of `to_disk`)."""
    family = family_of(model)
    forward = _renamings(model)
    rename_experts = family.from_disk if family is not None else (lambda name: name)
    return lambda name: _apply(rename_experts(name), forward)


def module_name(rename: Callable[[str], str], name: str) -> str:
    """A module's name through a tensor-name `rename` (to_disk / from_disk): renames match tensor keys, its
    weight's."""
    return rename(f"{name}.weight").removesuffix(".weight")
