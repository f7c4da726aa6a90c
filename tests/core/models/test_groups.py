"""Module groups per family against counts summed independently from named_parameters prefixes.

Models are built on the meta device (shapes without memory); the prefixes below are read off
transformers' module trees (print(model)), not taken from core/models/groups.py."""

from __future__ import annotations

import pytest
import torch

from core.models import MODELS, ModelConfig
from core.models.auto import meta_model
from core.models.groups import GROUPS, OTHER, group_counts, module_groups

# group -> parameter-name prefixes; the first matching group wins (list the specific ones first)
LLAVA = {"projector": ["model.multi_modal_projector."], "vision": ["model.vision_tower."],
         "embeddings": ["model.language_model.embed_tokens."], "language": ["model.language_model."],
         "lm_head": ["lm_head."]}
LLAVA_NEXT = {**LLAVA, "projector": ["model.multi_modal_projector.", "model.image_newline"]}
QWEN_VL = {"projector": ["model.visual.merger.", "model.visual.deepstack_merger_list."], "vision": ["model.visual."],
           "embeddings": ["model.language_model.embed_tokens."], "language": ["model.language_model."],
           "lm_head": ["lm_head."]}
CAUSAL = {"embeddings": ["model.embed_tokens."], "lm_head": ["lm_head."], "language": ["model."]}


def expected_counts(model: torch.nn.Module, prefixes: dict[str, list[str]]) -> dict[str, int]:
    counts = dict.fromkeys(GROUPS, 0)
    for name, param in model.named_parameters():
        group = next(g for g, ps in prefixes.items() if any(name.startswith(p) for p in ps))
        counts[group] += param.numel()
    return counts


def assert_groups(model: torch.nn.Module, prefixes: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    counts = group_counts(model)
    assert OTHER not in counts, counts
    assert {g: c["params"] for g, c in counts.items()} == expected_counts(model, prefixes)
    assert sum(c["params"] for c in counts.values()) == sum(p.numel() for p in model.parameters())
    for group in ("vision", "projector", "language", "embeddings"):
        assert counts[group]["params"] > 0 or group in ("vision", "projector"), (group, counts)
    return counts


def _meta(name: str, **overrides) -> torch.nn.Module:
    return meta_model(MODELS.get(name), ModelConfig(name=name, overrides=overrides))


def test_llava_tiny_groups_and_tied_lm_head() -> None:
    model = _meta("llava_tiny")
    counts = assert_groups(model, LLAVA)
    assert counts["lm_head"]["params"] == 0 and module_groups(model).tied == {"lm_head": "embeddings"}
    assert module_groups(model).members("lm_head") == ["model.language_model.embed_tokens.weight"]
    assert counts["vision"]["params"] > 0 and counts["projector"]["params"] > 0


def test_llava_next_small_groups_include_image_newline_in_projector() -> None:
    model = _meta("llava_next_small")
    assert type(model).__name__ == "LlavaNextForConditionalGeneration"
    counts = assert_groups(model, LLAVA_NEXT)
    assert "model.image_newline" in module_groups(model).names["projector"]
    assert counts["lm_head"]["params"] == counts["embeddings"]["params"] > 0  # untied
    assert module_groups(model).tied == {}


def test_causal_lm_groups_tied_and_untied() -> None:
    tied = _meta("qwen3_tiny")
    counts = assert_groups(tied, CAUSAL)
    assert counts["vision"]["params"] == counts["projector"]["params"] == counts["lm_head"]["params"] == 0
    untied = _meta("qwen3_tiny", tie_word_embeddings=False)
    assert assert_groups(untied, CAUSAL)["lm_head"]["params"] == 260 * 512


def _qwen_vl(config_name: str, text_config: dict, vision_config: dict) -> torch.nn.Module:
    import transformers

    from core.models.auto import from_config

    config = getattr(transformers, config_name)(text_config=text_config, vision_config=vision_config)
    with torch.device("meta"):
        return from_config(config)


SMALL_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=300)


@pytest.mark.parametrize(("config_name", "model_class", "vision"), [
    ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration", dict(depth=2, embed_dim=64, hidden_size=64, num_heads=4)),
    ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration",
     dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64, fullatt_block_indexes=[1])),
    ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration",
     dict(depth=3, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
          deepstack_visual_indexes=[0, 1])),
])
def test_qwen_vl_groups(config_name: str, model_class: str, vision: dict) -> None:
    text = {**SMALL_TEXT, **({"head_dim": 16} if config_name == "Qwen3VLConfig" else {})}
    model = _qwen_vl(config_name, text, vision)
    assert type(model).__name__ == model_class
    counts = assert_groups(model, QWEN_VL)
    assert counts["vision"]["params"] > 0 and counts["projector"]["params"] > 0
    if config_name == "Qwen3VLConfig":
        assert any(n.startswith("model.visual.deepstack_merger_list.") for n in module_groups(model).names["projector"])


def test_every_registered_family_resolves() -> None:
    """Every family's model types are transformers' own, and its group layout, block path and wiring are set."""
    from transformers import CONFIG_MAPPING

    from core.models.families import FAMILIES

    for name in FAMILIES.names():
        family = FAMILIES.get(name)
        assert family.name == name and family.blocks.endswith("layers"), name
        for model_type in family.model_types:
            assert model_type in CONFIG_MAPPING, (name, model_type)
        # wiring is found by block class: mappings need one; a family may name its blocks without mappings (MoE:
        # AWQ/SmoothQuant refuse it with one line; VLMs name none: their language blocks are another family's)
        assert not family.mappings or family.block_classes, name


def test_image_text_class_without_layout_is_unknown_not_guessed(meta_unknown_vlm) -> None:
    """A VLM family with no registry entry: embeddings/lm_head still found, the rest in `other`."""
    model = meta_unknown_vlm
    groups = module_groups(model)
    assert not groups.known and groups.names["vision"] == [] and groups.names[OTHER]
    assert groups.names["embeddings"] == ["model.language_model.embed_tokens.weight"]
