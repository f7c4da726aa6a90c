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


def test_bad_recipe_is_a_config_error(tmp_path: Path) -> None:
    from core.errors import ConfigError

    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(ConfigError, match="quant.recipe: .* not a sensitivity report.json"):
        load_recipe(str(tmp_path))
