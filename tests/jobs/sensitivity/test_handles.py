"""search.handles: the Linears a serving engine fuses into one GEMM (q/k/v, gate/up, a block's experts, DeepSeek's
MLA latent projections) are one handle in every mode, so the search's choices never split them (vLLM refuses q/k/v in
different schemes). Tiny meta-device models of every text and mixture-of-experts family (only config.json on disk),
through the driver's own handle builder and the exact search with random scores; the sets are written out here,
not taken from the family registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import ConfigError
from core.quant.recipe import handle_members
from jobs.sensitivity.driver import _check, _handles, _search_handles
from jobs.sensitivity.search import search
from tests.jobs.family_models import MOE, MOE_FAMILIES, TEXT_FAMILIES, text_config

CANDIDATES = ["w4g32", "w8", "fp16"]  # the tiny models' in_features are multiples of 32
QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
GATE_UP = ("mlp.gate_proj", "mlp.up_proj")
EXPERTS = tuple(f"mlp.experts.{e}.{p}" for e in range(4) for p in ("gate_proj", "up_proj", "down_proj"))
MLA = ("self_attn.q_a_proj", "self_attn.kv_a_proj_with_mqa")
SHARED = ("mlp.shared_experts.gate_proj", "mlp.shared_experts.up_proj")
FUSED = {  # model_type -> the serving-fused sets of each block (by block index; -1: every other block)
    "llama": {-1: [QKV, GATE_UP]}, "qwen3": {-1: [QKV, GATE_UP]}, "mistral": {-1: [QKV, GATE_UP]},
    "gemma3_text": {-1: [QKV, GATE_UP]},
    "phi3": {-1: []},  # qkv_proj and gate_up_proj are single Linears already
    "qwen3_moe": {-1: [QKV, EXPERTS]}, "mixtral": {-1: [QKV, EXPERTS]}, "gpt_oss": {-1: [QKV, EXPERTS]},
    "deepseek_v3": {0: [MLA, GATE_UP], -1: [MLA, SHARED, EXPERTS]},  # block 0 dense (first_k_dense_replace=1)
}
assert set(FUSED) == set(TEXT_FAMILIES + MOE_FAMILIES) and all(len(MOE[f].keys() & {"num_experts",
    "num_local_experts", "n_routed_experts"}) == 1 for f in MOE)  # 4 experts each (EXPERTS)


@pytest.fixture(scope="module")
def config_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("configs")
    for model_type in FUSED:
        text_config(model_type).save_pretrained(root / model_type)
    return {model_type: root / model_type for model_type in FUSED}


def _spec(path: Path, *overrides: str) -> Any:
    from orchestrator.compose import compose, to_spec

    return to_spec(compose(["job=sensitivity", "model=hf", f"model.path={path}",
                            f"search.candidates=[{','.join(CANDIDATES)}]", *overrides]))


def _fused_sets(model_type: str, layers: int = 2) -> list[list[str]]:
    sets = FUSED[model_type]
    return [[f"model.layers.{i}.{n}" for n in members] for i in range(layers) for members in sets.get(i, sets[-1])]


def _random_choices(groups: dict[str, list[str]], shapes: dict, seed: int) -> dict[str, str]:
    """The search's per-Linear choices under random scores and a budget halfway between all-w4 and all-fp16."""
    rng = np.random.default_rng(seed)
    scores = {h: {c: float(rng.exponential() * (len(CANDIDATES) - k)) for k, c in enumerate(CANDIDATES)}
              for h in groups}
    handles = _search_handles(groups, shapes, scores)
    result = search(handles, 10.0)
    return {m: fmt for h, fmt in result.choices.items() for m in handle_members(h)}


@pytest.mark.parametrize("model_type", sorted(FUSED))
def test_default_search_never_splits_a_serving_fused_set(model_type: str, config_dirs: dict[str, Path]) -> None:
    spec = _spec(config_dirs[model_type])
    assert spec.search.handles == "serving"  # the default
    groups, shapes, _ = _handles(spec)
    fused = _fused_sets(model_type)
    # serving mode: each fused set is exactly one handle, every other Linear a handle of its own
    assert sorted(m for m in groups.values() if len(m) > 1) == sorted(fused)
    assert set(shapes) == {n for members in groups.values() for n in members}
    formats_seen = set()
    for seed in range(3):
        chosen = _random_choices(groups, shapes, seed)
        assert set(chosen) == set(shapes)
        for members in fused:
            assert len({chosen[m] for m in members}) == 1, (members, [chosen[m] for m in members])
        formats_seen |= set(chosen.values())
    assert len(formats_seen) > 1  # the budget made the search mix formats


@pytest.mark.parametrize("model_type", ["llama", "deepseek_v3"])
def test_shared_input_handles_hold_whole_serving_sets(model_type: str, config_dirs: dict[str, Path]) -> None:
    """shared_input joins Linears reading one input (DeepSeek: every expert's and the shared expert's gate/up read
    one norm): coarser handles, each serving-fused set still inside one of them (the experts' down_projs too)."""
    groups, _, _ = _handles(_spec(config_dirs[model_type], "search.handles=shared_input"))
    handle_of = {m: h for h, members in groups.items() for m in members}
    for members in _fused_sets(model_type):
        assert len({handle_of[m] for m in members}) == 1, members
    if model_type == "deepseek_v3":
        moe_mlp = [h for h, members in groups.items() if "model.layers.1.mlp.experts.0.down_proj" in members]
        assert set(SHARED) <= {m.split("layers.1.")[1] for m in groups[moe_mlp[0]]}


def test_linear_mode_is_refused() -> None:
    """Each Linear alone split q/k/v; the old spelling fails with a pointer to the default."""
    from jobs.sensitivity.config import SearchConfig

    with pytest.raises(ConfigError) as err:
        _check(SearchConfig(handles="linear"))
    assert err.value.field == "search.handles" and "use serving" in str(err.value) and "\n" not in str(err.value)


def test_ignoring_part_of_a_fused_set_is_refused(config_dirs: dict[str, Path]) -> None:
    """An ignored Linear takes quant.format under quant=mixed: ignoring k_proj alone would split q/k/v."""
    spec = _spec(config_dirs["llama"], "search.ignore=[lm_head,model.layers.0.self_attn.k_proj]")
    with pytest.raises(ConfigError) as err:
        _handles(spec)
    assert err.value.field == "search.ignore"
    assert "model.layers.0.self_attn.k_proj but not all of model.layers.0.self_attn.q_proj, k_proj, v_proj" in str(
        err.value)
    groups, _, excluded = _handles(_spec(config_dirs["llama"], "search.ignore=[lm_head,model.layers.0.self_attn]"))
    assert excluded["model.layers.0.self_attn.k_proj"] == "search.ignore"
    assert not any("layers.0.self_attn.q_proj" in h for h in groups)
