"""quant=mixed recipes: handle names, a bad report. End to end (sensitivity run -> quant=mixed -> export ->
reload): tests/jobs/sensitivity/test_sensitivity_e2e.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.quant.recipe import handle_members, handle_name, load_recipe


def test_handle_names_round_trip() -> None:
    members = ["model.layers.3.self_attn.q_proj", "model.layers.3.self_attn.k_proj", "model.layers.3.self_attn.v_proj"]
    assert handle_name(members) == "model.layers.3.self_attn.q_proj+k_proj+v_proj"
    assert handle_members(handle_name(members)) == members
    assert handle_members("model.layers.0.mlp.down_proj") == ["model.layers.0.mlp.down_proj"]


def test_handle_names_of_members_with_other_parents_round_trip() -> None:
    """A block's experts (serving-fused: one handle) have one parent each; DeepSeek's shared expert, joined with them
    under search.handles=shared_input, sits one level higher."""
    experts = [f"model.layers.1.mlp.experts.{e}.{p}" for e in range(2) for p in ("gate_proj", "up_proj", "down_proj")]
    name = handle_name(experts)
    assert name == "model.layers.1.mlp.experts.0.gate_proj+up_proj+down_proj+1.gate_proj+1.up_proj+1.down_proj"
    assert handle_members(name) == experts
    shared = ["model.layers.1.mlp.shared_experts.gate_proj", "model.layers.1.mlp.shared_experts.up_proj"]
    name = handle_name([*shared, *experts[:2]])  # the deepest comes first
    assert name == ("model.layers.1.mlp.experts.0.gate_proj+^shared_experts.gate_proj+^shared_experts.up_proj"
                    "+up_proj")
    assert sorted(handle_members(name)) == sorted([*shared, *experts[:2]])


def test_bad_recipe_is_a_config_error(tmp_path: Path) -> None:
    from core.errors import ConfigError

    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(ConfigError, match="quant.recipe: .* not a sensitivity report.json"):
        load_recipe(str(tmp_path))
