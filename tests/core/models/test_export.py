"""Export metadata and weight layout (core/models/export.py): dtype, use_cache, eos / pad / end-of-turn ids,
generation_config.json, and safetensors in one file or in shards with Hugging Face's index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.models.byte_tokenizer import EOS_ID, PAD_ID, VOCAB_SIZE, byte_tokenizer
from core.models.export import (
    INDEX,
    WEIGHTS,
    end_of_turn_id,
    export_config,
    export_dtype,
    hf_state_dict,
    load_weights,
    save_weights,
    special_ids,
    weight_files,
    write_generation_config,
)

SMALL = dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16)


def _qwen_like_tokenizer():
    """Qwen3's arrangement: eos `<|endoftext|>`, turns ended by `<|im_end|>` (a distinct id)."""
    tokenizer = byte_tokenizer()
    tokenizer.eos_token = "<|endoftext|>"
    return tokenizer


def _model(dtype: torch.dtype = torch.float32, **fields):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen3", **SMALL, **fields), dtype=dtype).eval()


@pytest.mark.parametrize(("declared", "expected"), [(None, torch.float32), ("bfloat16", torch.bfloat16),
                                                    ("float16", torch.float16), (torch.bfloat16, torch.bfloat16)])
def test_export_dtype_is_what_the_input_model_declares(declared, expected) -> None:
    from transformers import LlavaConfig, Qwen3Config

    assert export_dtype(Qwen3Config(dtype=declared)) is expected
    assert export_dtype({"dtype": declared}) is expected
    assert export_dtype({"torch_dtype": declared}) is expected  # config.json files written before transformers 5
    vlm = LlavaConfig(text_config={"model_type": "qwen3", "dtype": declared})
    vlm.dtype = None
    assert export_dtype(vlm) is expected  # declared by its text config only
    with pytest.raises(ValueError, match="not a torch dtype"):
        export_dtype({"dtype": "bfloat17"})


def test_end_of_turn_comes_from_the_chat_template() -> None:
    assert end_of_turn_id(byte_tokenizer()) == EOS_ID  # the byte tokenizer's eos ends turns itself
    assert special_ids(byte_tokenizer()) == {"eos_token_id": EOS_ID, "pad_token_id": PAD_ID, "bos_token_id": None}
    qwen_like = _qwen_like_tokenizer()
    assert special_ids(qwen_like)["eos_token_id"] == [qwen_like.eos_token_id, EOS_ID]  # [eos, end of turn]
    no_template = byte_tokenizer()
    no_template.chat_template = None
    assert end_of_turn_id(no_template) is None
    assert special_ids(no_template)["eos_token_id"] == EOS_ID


def test_export_config_serves_text_and_vlm_configs() -> None:
    from transformers import Qwen3Config

    from core.models.tiny_vlm import LLAVA_TINY

    tokenizer = _qwen_like_tokenizer()
    trained = Qwen3Config(**SMALL, pad_token_id=0, use_cache=False, dtype=torch.float32)  # as training leaves it
    original = json.loads(trained.to_json_string(use_diff=False))
    config = export_config(original, tokenizer, torch.bfloat16)
    assert original["use_cache"] is False and original["pad_token_id"] == 0  # a copy
    assert config["use_cache"] is True and config["dtype"] == "bfloat16"
    assert (config["eos_token_id"], config["pad_token_id"]) == ([tokenizer.eos_token_id, EOS_ID], PAD_ID)
    assert Qwen3Config.from_dict(config).dtype == torch.bfloat16  # transformers reads it back

    vlm = json.loads(LLAVA_TINY.make_config({}).to_json_string(use_diff=False)) | {"use_cache": False}
    served = export_config(vlm, tokenizer, torch.bfloat16)
    text = served["text_config"]
    assert text["use_cache"] is True and served["use_cache"] is True
    assert (text["eos_token_id"], text["pad_token_id"]) == ([tokenizer.eos_token_id, EOS_ID], PAD_ID)
    assert "eos_token_id" not in served  # transformers 5 reads a LLaVA's ids from its text config
    assert served["dtype"] == text["dtype"] == served["vision_config"]["dtype"] == "bfloat16"


def test_generation_config_stops_at_the_end_of_a_turn(tmp_path: Path) -> None:
    from transformers import GenerationConfig

    from core.models.tiny_vlm import LLAVA_TINY

    tokenizer = _qwen_like_tokenizer()
    for name, config in [("text", {"model_type": "qwen3", "eos_token_id": 1, "pad_token_id": 0}),
                         ("vlm", json.loads(LLAVA_TINY.make_config({}).to_json_string(use_diff=False)))]:
        write_generation_config(tmp_path / name, export_config(config, tokenizer, torch.float32), tokenizer)
        generation = GenerationConfig.from_pretrained(tmp_path / name)
        assert generation.eos_token_id == [tokenizer.eos_token_id, EOS_ID], name
        assert generation.pad_token_id == PAD_ID and generation.use_cache is True, name


def test_weights_round_trip_in_one_file_and_in_shards(tmp_path: Path) -> None:
    from safetensors import safe_open

    from core.models.files import check_model_dir

    model = _model(tie_word_embeddings=True)
    state = hf_state_dict(model, model.state_dict())
    assert "lm_head.weight" not in state  # tied to the embeddings: written once, as transformers does
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    for directory in (one, sharded):
        directory.mkdir()
        model.config.save_pretrained(directory)
    assert save_weights(state, one) == [WEIGHTS] and not (one / INDEX).exists()
    names = save_weights(state, sharded, max_shard_size="100KB")
    assert len(names) > 2 and names[0] == f"model-00001-of-{len(names):05d}.safetensors"
    index = json.loads((sharded / INDEX).read_text())
    assert sorted(index["weight_map"]) == sorted(state) and set(index["weight_map"].values()) == set(names)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    assert [p.name for p in weight_files(sharded)] == sorted(names)
    for path in weight_files(sharded):
        with safe_open(str(path), "pt") as fh:
            assert fh.metadata() == {"format": "pt"}
    for directory in (one, sharded):
        loaded = load_weights(directory)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
        check_model_dir(directory, "model.path")  # what model=hf checks before a job loads it
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_weights(tmp_path)


def test_transformers_loads_a_sharded_export(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = _model(torch.bfloat16)
    model.config.save_pretrained(tmp_path)
    save_weights(hf_state_dict(model, model.state_dict()), tmp_path, max_shard_size="100KB")
    assert (tmp_path / INDEX).exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=True).eval()
    assert loaded.dtype == torch.bfloat16
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_moe_experts_are_written_per_expert_as_save_pretrained_does(tmp_path: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("qwen3_moe", **SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / WEIGHTS), "pt") as fh:
        on_disk = set(fh.keys())
    state = hf_state_dict(model, model.state_dict())
    assert set(state) == on_disk and "model.layers.0.mlp.experts.3.down_proj.weight" in state
