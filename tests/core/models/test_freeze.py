"""model.freeze on meta-device models: what each entry kind selects, and every bad input's one-line error."""

from __future__ import annotations

import re

import pytest

from core.errors import ConfigError
from core.models import MODELS, ModelConfig
from core.models.auto import meta_model
from core.models.freeze import apply_freeze, check_freeze


def _model(name: str = "llava_tiny", **overrides):
    return meta_model(MODELS.get(name), ModelConfig(name=name, overrides=overrides))


def _frozen(model) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def _names(model, prefix: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


def test_groups_freeze_exactly_their_parameters() -> None:
    model = _model()
    report = apply_freeze(model, ["vision", "projector"])
    expected = _names(model, "model.vision_tower.") | _names(model, "model.multi_modal_projector.")
    assert _frozen(model) == expected
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for n, p in model.named_parameters() if n in expected)
    assert report.frozen_params == frozen and report.trainable_params == total - frozen and not report.notes


def test_regex_include_then_exclude() -> None:
    model = _model()
    apply_freeze(model, ["language", r"re:^model\.vision_tower\.encoder\.layers\.0\.", r"!re:\.layers\.2\."])
    language = _names(model, "model.language_model.") - _names(model, "model.language_model.embed_tokens.")
    expected = (language | _names(model, "model.vision_tower.encoder.layers.0.")) - {
        n for n in language if ".layers.2." in n}
    assert _frozen(model) == expected


def test_exclude_a_group_from_everything() -> None:
    model = _model()
    apply_freeze(model, ["re:.", "!projector"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == _names(model, "model.multi_modal_projector.")


@pytest.mark.parametrize("entry", ["embeddings", "lm_head", r"re:^lm_head\.weight$"])
def test_tied_embeddings_freeze_the_shared_tensor(entry: str) -> None:
    model = _model("qwen3_tiny")
    report = apply_freeze(model, [entry])
    assert _frozen(model) == {"model.embed_tokens.weight"} and not model.lm_head.weight.requires_grad
    assert report.notes == ["lm_head is tied to embeddings: the shared tensor is frozen for both"]


def test_untied_lm_head_freezes_alone() -> None:
    model = _model("qwen3_tiny", tie_word_embeddings=False)
    report = apply_freeze(model, ["lm_head"])
    assert _frozen(model) == {"lm_head.weight"} and not report.notes


def test_no_entries_change_nothing() -> None:
    model = _model()
    assert apply_freeze(model, []) is None and not _frozen(model)


BAD = {  # entries, model -> the message after "config error: model.freeze: "
    # not a group, so a name (core/models/select.py): it names no parameter
    "unknown_group": (["visoin"], "llava_tiny", "'visoin': matches no parameter of LlavaForConditionalGeneration"),
    "bad_regex": (["re:layers.("], "llava_tiny", "'re:layers.(': not a valid regex"),
    "regex_matches_nothing": (["re:^nope\\."], "llava_tiny", "'re:^nope\\\\.': matches no parameter of "
                              "LlavaForConditionalGeneration"),
    "group_empty_on_text_model": (["vision"], "qwen3_tiny", "'vision': matches no parameter of Qwen3ForCausalLM"),
    "exclude_thaws_nothing": (["vision", "!projector"], "llava_tiny",
                              "'!projector' excludes nothing the other entries select"),
    "only_excludes": (["!vision"], "llava_tiny", "only exclusions (!vision): nothing to freeze"),
    "empty_entry": ([""], "llava_tiny", "empty entry ''"),
    "everything": (["re:."], "qwen3_tiny", "re:. freezes every parameter: nothing left to train"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_freeze_is_a_config_error_naming_the_field(case: str) -> None:
    entries, name, message = BAD[case]
    with pytest.raises(ConfigError) as err:
        check_freeze(MODELS.get(name), ModelConfig(name=name, freeze=entries))
    assert str(err.value).startswith("config error: model.freeze: " + message), str(err.value)
    assert "\n" not in str(err.value)


def test_group_of_a_vlm_without_layout_asks_for_regex(meta_unknown_vlm) -> None:
    model = meta_unknown_vlm
    with pytest.raises(ConfigError, match=re.escape("'vision': Gemma3ForConditionalGeneration has no group layout")):
        apply_freeze(model, ["vision"])
    apply_freeze(model, ["embeddings", r"re:^model\.vision_tower\."])  # regexes and API-found groups still work
    assert "model.language_model.embed_tokens.weight" in _frozen(model)
