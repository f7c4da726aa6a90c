"""Tiny random-init model directories of the families users bring, built from their transformers configs (nothing
downloaded) and saved as `model=hf` loads them: weights (safetensors), the byte tokenizer, a VLM's processor."""

from __future__ import annotations

from pathlib import Path

import torch

from core.models.byte_tokenizer import VOCAB_SIZE, byte_tokenizer

# a small language model: every Linear's in_features divisible by 32 (w4g32), two blocks
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, max_position_embeddings=1024, bos_token_id=256, eos_token_id=258, pad_token_id=256)
TEXT_FAMILIES = ["llama", "qwen3", "mistral", "phi3", "gemma3_text"]
VLM_FAMILIES = ["llava"]
TINY_FAMILIES = TEXT_FAMILIES + VLM_FAMILIES


def _text(root: Path, model_type: str) -> Path:
    from transformers import AutoConfig

    from core.models.auto import from_config

    config = AutoConfig.for_model(model_type, vocab_size=VOCAB_SIZE, tie_word_embeddings=False, **TEXT)
    torch.manual_seed(0)
    out = root / model_type
    from_config(config).save_pretrained(out)
    byte_tokenizer().save_pretrained(out)
    return out


def _llava(root: Path) -> Path:
    from core.models import MODELS, ModelConfig, build_model

    text = {k: v for k, v in TEXT.items() if not k.endswith("token_id")}
    cfg = ModelConfig(name="llava_tiny", overrides={"text_config": text})
    source, out = MODELS.get("llava_tiny"), root / "llava"
    build_model(cfg, torch.float32).save_pretrained(out)
    source.tokenizer(cfg).save_pretrained(out)
    source.processor(cfg).hf.save_pretrained(out)
    return out


def saved_families(root: Path) -> dict[str, Path]:
    """Every family's directory under `root`."""
    dirs = {name: _text(root, name) for name in TEXT_FAMILIES}
    dirs["llava"] = _llava(root)
    return dirs
