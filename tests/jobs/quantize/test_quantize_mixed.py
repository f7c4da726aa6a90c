"""quant=mixed end to end: job=sensitivity picks formats per Linear under a budget, job=quantize applies them
from the sensitivity run's MLflow id, the export records per-module formats and reloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jobs.quantize.load import load_quantized
from jobs.sensitivity.recipe import handle_members, handle_name, load_recipe
from tests.conftest import run_cli, run_id_of
from tests.jobs.conftest import TINY_QUANT

MODEL = TINY_QUANT[1:4]  # the same model overrides as every quantize test


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


def test_mixed_precision_from_a_sensitivity_run(quant_storage: Path, fp_dir: Path) -> None:
    sens = run_cli(["job=sensitivity", *MODEL, "calib.num_samples=8", "calib.seq_len=64", "search.batch_size=2",
                    "search.candidates=[w4g128,w8,fp16]", "search.effective_bits=9", "cluster.include_dashboard=false",
                    "job.name=sens"], quant_storage)
    assert sens.returncode == 0, sens.stdout[-3000:] + sens.stderr[-3000:]
    chosen = load_recipe(str(quant_storage / "sens" / "report"))
    # 9 bits: w8 everywhere costs 8.06 (a 16-bit scale per row), the rest buys fp16 for the most sensitive
    assert "fp16" in chosen.values() and len(set(chosen.values())) >= 2, chosen

    result = run_cli([*TINY_QUANT, "quant=mixed", f"quant.recipe={run_id_of(sens.stdout)}", "job.name=mixed"],
                     quant_storage)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    export = quant_storage / "mixed" / "export"
    qc = json.loads((export / "config.json").read_text())["quantization_config"]
    targets = {name: g["weights"] for g in qc["config_groups"].values() for name in g["targets"]}
    tensors = load_file(export / "model.safetensors")
    fp = load_file(fp_dir / "model.safetensors")
    for name, fmt in chosen.items():
        if fmt == "fp16":  # left unquantized: the FP weights, listed in ignore
            assert name in qc["ignore"] and f"{name}.weight_packed" not in tensors
            assert torch.equal(tensors[f"{name}.weight"], fp[f"{name}.weight"]), name
        else:
            bits, group = (4, 128) if fmt == "w4g128" else (8, None)
            assert (targets[name]["num_bits"], targets[name]["group_size"]) == (bits, group), name
            assert f"{name}.weight_packed" in tensors, name
    model = load_quantized(export)
    with torch.no_grad():
        assert torch.isfinite(model(torch.arange(16).unsqueeze(0)).logits).all()
