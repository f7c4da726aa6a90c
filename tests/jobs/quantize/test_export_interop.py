"""Every export format on one tiny Llama (hidden 128, so every group size applies), read the way users serve it:
plain transformers + compressed-tensors in a separate process (tests/jobs/interop.py, its tolerances), and the
config each format must carry for vLLM to pick a kernel. The per-family check (w4g128, w8a8 on every family of the
registry) is the family matrix's (tests/jobs/test_family_matrix.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.jobs.interop import PlainTransformers, assert_serves, write_reference
from tests.jobs.quantize_in_process import calibrate

pytestmark = pytest.mark.e2e  # (tests/conftest.py: the end-to-end lane; a second interpreter)

# its eos / pad ids deliberately not the byte tokenizer's: the export takes the tokenizer's (the bf16 test)
LLAMA = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=256, bos_token_id=256, eos_token_id=258,
             pad_token_id=256)
WEIGHT_ONLY = [f"w{bits}{f'g{group}' if group else ''}" for bits in (2, 3, 4) for group in (32, 64, 128, None)]
# (format, symmetric) -> the storage format compressed-tensors picks and vLLM dispatches on
CASES = [*((fmt, True) for fmt in WEIGHT_ONLY), ("w8", True), ("w8a8", True), ("w4a8g128", True),
         ("w4g128", False), ("w3", False), ("w8", False), ("w2g32", False)]
MIXED = {"model.layers.0.self_attn.q_proj+k_proj+v_proj": "w8", "model.layers.0.mlp.down_proj": "fp16",
         "model.layers.1.mlp.gate_proj+up_proj": "w3g64"}


def _llama(out: Path, dtype: torch.dtype) -> Path:
    from transformers import AutoConfig

    from core.models.auto import from_config
    from core.models.byte_tokenizer import VOCAB_SIZE, byte_tokenizer

    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=VOCAB_SIZE, tie_word_embeddings=False, **LLAMA)
    from_config(config).to(dtype).save_pretrained(out)
    byte_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _llama(tmp_path_factory.mktemp("interop") / "llama", torch.float32)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlainTransformers]:
    process = PlainTransformers(tmp_path_factory.mktemp("plain"))
    yield process
    process.close()


def _ids() -> torch.Tensor:
    return torch.randint(3, 250, (2, 24), generator=torch.Generator().manual_seed(0))


def _export(llama_dir: Path, tmp_path: Path, fmt: str, symmetric: bool, algorithm: str = "rtn",
            extra: tuple[str, ...] = ()) -> Path:
    out = calibrate("llama", llama_dir, algorithm, fmt, tmp_path, (f"quant.symmetric={str(symmetric).lower()}", *extra),
                    tag="" if symmetric else "asym")
    return out["export"]


def _quantization_config(export: Path) -> dict:
    return json.loads((export / "config.json").read_text())["quantization_config"]


@pytest.mark.parametrize(("fmt", "symmetric"), CASES, ids=[f"{f}-{'sym' if s else 'asym'}" for f, s in CASES])
def test_format_loads_where_users_serve(fmt: str, symmetric: bool, llama_dir: Path, tmp_path: Path,
                                         plain: PlainTransformers) -> None:
    import compressed_tensors

    export = _export(llama_dir, tmp_path, fmt, symmetric)
    answer = plain.check(export, write_reference(export, _ids(), tmp_path / "reference.safetensors"))
    assert_serves(answer, export)

    qc = _quantization_config(export)
    assert qc["version"] == compressed_tensors.__version__ and qc["quant_method"] == "compressed-tensors"
    (group,) = qc["config_groups"].values()
    weights, acts = group["weights"], group["input_activations"]
    assert (weights["num_bits"], weights["symmetric"], weights["type"]) == (int(fmt[1]), symmetric, "int")
    assert weights["strategy"] == ("group" if "g" in fmt else "channel")
    if "a8" in fmt:  # int8 activations, per token, dynamic: vLLM's W8A8 / W4A8 int schemes
        assert qc["format"] == group["format"] == "int-quantized"
        assert (acts["num_bits"], acts["strategy"], acts["dynamic"], acts["symmetric"]) == (8, "token", True, True)
    else:
        assert qc["format"] == group["format"] == "pack-quantized" and acts is None
    assert "lm_head" in qc["ignore"]


def test_mixed_recipe_loads_where_users_serve(llama_dir: Path, tmp_path: Path, plain: PlainTransformers) -> None:
    """A mixed recipe (a sensitivity report's choices, some Linears unnamed): one config group per format, by Linear
    name, then the default format for every other Linear; the FP Linear ignored."""
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.json").write_text(json.dumps({"choices": MIXED}))
    export = _export(llama_dir, tmp_path, "w4g128", True, "mixed", (f"quant.recipe={report}",))  # GPTQ
    assert_serves(plain.check(export, write_reference(export, _ids(), tmp_path / "reference.safetensors")), export)

    qc = _quantization_config(export)
    assert qc["format"] == "pack-quantized"  # every group's (weight-only formats): one storage format
    targets = {g["weights"]["num_bits"]: set(g["targets"]) for g in qc["config_groups"].values()}
    assert targets[4] == {"Linear"}  # the default, for the Linears the recipe does not name
    assert targets[8] == {f"model.layers.0.self_attn.{p}_proj" for p in "qkv"}
    assert {"model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"} <= targets[3]
    assert "model.layers.0.mlp.down_proj" in qc["ignore"]
    assert "model.layers.0.mlp.down_proj.weight" in _plain_keys(export)  # left FP: its weight as is


def _plain_keys(export: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(export / "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_bf16_model_exports_bf16_with_serving_metadata(tmp_path: Path, plain: PlainTransformers) -> None:
    """Calibrated in float32 on the CPU, a bf16 model's export is bf16 (scales included, as transformers and vLLM
    allocate them), with use_cache on, generation_config.json, and eos / pad ids the tokenizer's."""
    from safetensors import safe_open

    from core.models.byte_tokenizer import byte_tokenizer

    export = _export(_llama(tmp_path / "llama-bf16", torch.bfloat16), tmp_path, "w4g128", True)
    config = json.loads((export / "config.json").read_text())
    generation = json.loads((export / "generation_config.json").read_text())
    tokenizer = byte_tokenizer()
    assert config["dtype"] == "bfloat16" and config["use_cache"] is True
    assert config["eos_token_id"] == tokenizer.eos_token_id and config["pad_token_id"] == tokenizer.pad_token_id
    assert tokenizer.eos_token_id in _as_list(generation["eos_token_id"])
    assert generation["pad_token_id"] == tokenizer.pad_token_id
    with safe_open(str(export / "model.safetensors"), "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    floats = {k: d for k, d in dtypes.items() if d.startswith(("F", "BF"))}
    assert floats and set(floats.values()) == {"BF16"}, floats
    assert dtypes["model.layers.0.self_attn.q_proj.weight_scale"] == "BF16"
    assert_serves(plain.check(export, write_reference(export, _ids(), tmp_path / "reference.safetensors")), export)


def _as_list(value: int | list[int]) -> list[int]:
    return value if isinstance(value, list) else [value]
