"""One module-selection grammar (core/models/select.py) for model.freeze, quant.ignore and search.ignore."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.errors import ConfigError
from core.models import MODELS, ModelConfig
from core.models.auto import meta_model
from core.models.freeze import resolve
from core.models.select import select, select_linears

NAMES = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj",
         "model.layers.10.mlp.down_proj", "lm_head"]


@pytest.mark.parametrize("entries,expected", [
    (["lm_head"], {"lm_head"}),
    (["model.layers.1"], {"model.layers.1.mlp.down_proj"}),  # a prefix of dotted parts, not of characters
    (["*.down_proj"], {n for n in NAMES if n.endswith("down_proj")}),
    (["re:layers\\.1"], {"model.layers.1.mlp.down_proj", "model.layers.10.mlp.down_proj"}),  # re.search
    (["re:down_proj$", "!model.layers.10"], {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"}),
])
def test_semantics(entries: list[str], expected: set[str]) -> None:
    assert select(NAMES, entries, "quant.ignore", "M") == expected


@pytest.mark.parametrize("entries,message", [
    (["nope"], "'nope': matches no module of M"),
    (["re:("], "'re:(': not a valid regex"),
    (["lm_head", "!re:q_proj"], "'!re:q_proj' excludes nothing the other entries select"),
    ([""], "empty entry ''"),
])
def test_one_error_per_bad_entry(entries: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        select(NAMES, entries, "search.ignore", "M")
    assert err.value.field == "search.ignore" and message in str(err.value) and "\n" not in str(err.value)


ENTRIES = [("qwen3_tiny", "re:layers\\.1\\.mlp"), ("qwen3_tiny", "*.down_proj"), ("qwen3_tiny", "re:down_proj$"),
           ("qwen3_tiny", "model.layers.0"), ("llava_tiny", "vision"), ("llava_tiny", "model.multi_modal_projector"),
           ("llava_tiny", "lm_head"), ("llava_tiny", "re:^lm_head$"), ("llava_tiny", "re:layers\\.2\\.")]


@pytest.mark.parametrize("model,entry", ENTRIES)
def test_the_same_entry_selects_the_same_modules_in_all_three_settings(model: str, entry: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """model.freeze's parameters, quant.ignore's and search.ignore's Linears, each through its job's own code path
    (freeze's resolve, the quantize driver's model check, the sensitivity driver's handles): one set of Linears."""
    from jobs.quantize import driver as quantize
    from jobs.sensitivity.driver import _handles
    from orchestrator.compose import compose, to_spec

    built = meta_model(MODELS.get(model), ModelConfig(name=model))
    linears = {n for n, m in built.named_modules() if isinstance(m, torch.nn.Linear)}
    frozen, _ = resolve(built, [entry])
    aliases = {n for n, _ in built.named_parameters(remove_duplicate=False)}
    by_freeze = {n for n in linears if f"{n}.weight" in frozen
                 or (f"{n}.weight" in aliases and _same_tensor(built, f"{n}.weight", frozen))}

    spec = to_spec(compose(["job=quantize", f"model={model}"]))
    spec.quant.ignore = [entry]
    seen: list[set[str]] = []
    monkeypatch.setattr(quantize, "select_linears", lambda *a: seen.append(select_linears(*a)) or seen[-1])
    try:
        quantize._check_model(spec, quantize._check_quant(spec.quant), {})
    except ConfigError as err:  # a block Linear selected: refused (only modules outside the blocks are ignored)
        assert err.field == "quant.ignore" and "inside a decoder block" in err.message
        assert any(err.message.startswith(n + " ") for n in seen[0])
    by_quant = seen[0]

    spec = to_spec(compose(["job=sensitivity", f"model={model}"]))
    spec.search.ignore = [entry]
    by_search = {n for n, why in _handles(spec)[2].items() if why == "search.ignore"}
    assert by_freeze == by_quant == by_search and by_quant


def _same_tensor(model: torch.nn.Module, alias: str, frozen: set[str]) -> bool:
    """A tied alias (lm_head.weight) is frozen when its canonical tensor is."""
    target = model.get_parameter(alias)
    return any(model.get_parameter(n) is target for n in frozen)


PARAMS = ["model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.down_proj.bias",
          "lm_head.weight"]


@pytest.mark.parametrize("entry,expected", [
    ("re:down_proj$", {"model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.down_proj.bias"}),  # its module
    ("re:^lm_head$", {"lm_head.weight"}),
    ("lm_head", {"lm_head.weight"}),
    ("re:layers\\.0\\.", {"model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.down_proj.bias"}),
    ("*.weight", {n for n in PARAMS if n.endswith(".weight")}),
])
def test_a_module_entry_selects_its_parameters(entry: str, expected: set[str]) -> None:
    """Names, globs and regexes match a name or any dotted prefix of it: the module holding a parameter."""
    assert select(PARAMS, [entry], "model.freeze", "M", what="parameter") == expected


FIRST = {"model.freeze": "model.embed_tokens.weight", "quant.ignore": "model.layers.0.self_attn.q_proj",
         "search.ignore": "model.layers.0.self_attn.q_proj"}


@pytest.mark.parametrize("args,field", [
    (["job=quantize", "quant.ignore=[nothing_here]"], "quant.ignore"),
    (["job=sensitivity", "search.ignore=[nothing_here]"], "search.ignore"),
    (["job=inspect", "model.freeze=[nothing_here]"], "model.freeze"),
])
def test_a_pattern_matching_nothing_is_one_line_exit_2(cli_in_process, tmp_path: Path, args: list[str],
                                                       field: str) -> None:
    result = cli_in_process([*args, "tracking.enabled=false"], tmp_path / "runs")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: config error: {field}: 'nothing_here': matches no " \
        f"{'parameter' if field == 'model.freeze' else 'module'} of Qwen3ForCausalLM " \
        f"(names look like {FIRST[field]!r}; job=inspect lists them)", result.stderr
