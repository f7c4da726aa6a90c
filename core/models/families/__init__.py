"""The one family registry: `family_of(model)` for a model, `wiring_of(block)` for a decoder block.

Adding a family is one module here holding its `Family` and one register line below.
"""

from __future__ import annotations

from typing import Any

from core.models.families.base import CAUSAL_LM, Family, GroupLayout, Mapping
from core.registry import Registry

FAMILIES: Registry[Family] = Registry("model family", "model")
FAMILIES.register("llama", "core.models.families.llama:LLAMA")
FAMILIES.register("phi3", "core.models.families.phi3:PHI3")
FAMILIES.register("gemma3_text", "core.models.families.gemma3:GEMMA3_TEXT")
FAMILIES.register("llava", "core.models.families.vlms:LLAVA")
FAMILIES.register("llava_next", "core.models.families.vlms:LLAVA_NEXT")
FAMILIES.register("qwen_vl", "core.models.families.vlms:QWEN_VL")
FAMILIES.register("internvl", "core.models.families.vlms:INTERNVL")
FAMILIES.register("mistral3", "core.models.families.vlms:MISTRAL3")
FAMILIES.register("qwen3_moe", "core.models.families.moe:QWEN3_MOE")
FAMILIES.register("mixtral", "core.models.families.moe:MIXTRAL")
FAMILIES.register("deepseek_v3", "core.models.families.moe:DEEPSEEK_V3")
FAMILIES.register("gpt_oss", "core.models.families.moe:GPT_OSS")

__all__ = ["CAUSAL_LM", "FAMILIES", "Family", "GroupLayout", "Mapping", "all_families", "family_of",
           "family_of_config", "wiring_of"]


def all_families() -> list[Family]:
    return [FAMILIES.get(name) for name in FAMILIES.names()]


def family_of(model: Any) -> Family | None:
    """The family of a whole model, by its config's model_type; None: not registered (the generic path)."""
    return family_of_config(getattr(model, "config", None))


def family_of_config(config: Any) -> Family | None:
    model_type = getattr(config, "model_type", None)
    return next((f for f in all_families() if model_type in f.model_types), None)


def wiring_of(block: Any) -> Family | None:
    """The family whose block wiring (mappings) a decoder block has: by class name, else by module names
    (a renamed class with the same wiring); None when no family's wiring matches."""
    cls = type(block).__name__
    for family in all_families():
        if cls in family.block_classes:
            return family
    names = {name for name, _ in block.named_modules()}
    for family in all_families():
        if family.mappings and all(m.prev in names and set(m.linears) <= names for m in family.mappings):
            return family
    return None
