"""Tiny random-init model directories of the families users bring, built from their transformers configs (nothing
downloaded) and saved as `model=hf` loads them: weights (safetensors), the byte tokenizer, a VLM's processor."""

from __future__ import annotations

from pathlib import Path

import torch

from core.models.byte_tokenizer import EOS_ID, PAD_ID, VOCAB_SIZE, byte_tokenizer

# a small language model: every Linear's in_features a multiple of 128 (w4g32 and w4g128 apply), two blocks
TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
            head_dim=16, max_position_embeddings=1024, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
TEXT_FAMILIES = ["llama", "qwen3", "mistral", "phi3", "gemma3_text"]
# mixture-of-experts: 4 experts, 2 per token; DeepSeek-V3's first block dense, its second MoE with a shared expert
MOE = {
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=128, decoder_sparse_step=1),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=128),
    "deepseek_v3": dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=128, n_shared_experts=1,
                        first_k_dense_replace=1, q_lora_rank=128, kv_lora_rank=128, qk_rope_head_dim=8,
                        qk_nope_head_dim=8, v_head_dim=16, n_group=1, topk_group=1, num_key_value_heads=8,
                        head_dim=8),  # its rotary part (qk_rope_head_dim)
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=128, sliding_window=8),
}
MOE_FAMILIES = list(MOE)
VLM_FAMILIES = ["llava"]
TINY_FAMILIES = TEXT_FAMILIES + MOE_FAMILIES + VLM_FAMILIES


def text_config(model_type: str):
    """The transformers config of a text or mixture-of-experts family's tiny model."""
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, vocab_size=VOCAB_SIZE, tie_word_embeddings=False,
                                **(TEXT | MOE.get(model_type, {})))


def _text(root: Path, model_type: str) -> Path:
    from core.models.auto import from_config

    torch.manual_seed(0)
    out = root / model_type
    from_config(text_config(model_type)).save_pretrained(out)
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
    dirs = {name: _text(root, name) for name in TEXT_FAMILIES + MOE_FAMILIES}
    dirs["llava"] = _llava(root)
    return dirs | {name: _vlm_text_side(root, name) for name in NO_CPU_PROCESSOR}


# VLMs whose transformers processors need torchvision (their video processors; Pixtral's image processor), which
# this CPU stack cannot load (the PyPI torchvision wheel does not match the CPU torch build): saved without a
# processor, so the matrix runs their text-side cells and tests/core/blocks their image path with pixels by hand
NO_CPU_PROCESSOR = ["qwen3_vl", "internvl", "mistral3"]
IMAGE_TOKEN = VOCAB_SIZE + 7  # inside the vocabulary, never produced by the byte tokenizer


def vlm_config(name: str):
    import transformers

    text = {k: v for k, v in TEXT.items() if not k.endswith("token_id")} | {"vocab_size": VOCAB_SIZE + 8}
    if name == "qwen3_vl":
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
        return transformers.Qwen3VLConfig(
            text_config={**text, "rope_parameters": rope},
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=8,
                               spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=128,
                               deepstack_visual_indexes=[0, 1], num_position_embeddings=16),
            image_token_id=IMAGE_TOKEN, video_token_id=IMAGE_TOKEN - 1, vision_start_token_id=IMAGE_TOKEN - 2,
            vision_end_token_id=IMAGE_TOKEN - 3)
    if name == "internvl":
        return transformers.InternVLConfig(
            text_config=dict(model_type="qwen2", **text), image_token_id=IMAGE_TOKEN, downsample_ratio=0.5,
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=[32, 32], patch_size=[8, 8]))
    return transformers.Mistral3Config(
        text_config=dict(model_type="mistral", **text), image_token_index=IMAGE_TOKEN, spatial_merge_size=2,
        vision_config=dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, head_dim=16, image_size=32, patch_size=8))


def _vlm_text_side(root: Path, name: str) -> Path:
    from core.models.auto import from_config

    torch.manual_seed(0)
    out = root / name
    from_config(vlm_config(name)).save_pretrained(out)
    byte_tokenizer().save_pretrained(out)
    return out


def image_rows(name: str, n_image: int = 2, n_text: int = 2, length: int = 16, seed: int = 0):
    """Calibration rows with images made by hand for the families whose processors this stack cannot load (what
    core/data/calib_mm.py makes from image+caption chats): each image row is a few text tokens, 4 image tokens
    (one 32x32 image in each family's geometry) and a caption that carries the loss; text rows are all loss."""
    import numpy as np

    from core.data.calib_mm import TEXT, VISION, CalibRows
    from core.data.tokenize import IGNORE

    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 250, (n_image + n_text, length))
    modality = np.full(ids.shape, TEXT, np.int8)
    labels = ids.copy()
    images = []
    for r in range(n_image):
        ids[r, 2:6] = IMAGE_TOKEN
        modality[r, 2:6] = VISION
        labels[r, :6] = IGNORE
        pixels = rng.standard_normal((16, 3 * 2 * 8 * 8) if name == "qwen3_vl" else (1, 3, 32, 32)).astype(np.float32)
        image = {"pixel_values": pixels}
        if name == "qwen3_vl":
            image["image_grid_thw"] = np.array([[1, 4, 4]])
        if name == "mistral3":
            image["image_sizes"] = np.array([[32, 32]])
        images.append([image])
    return CalibRows(ids.astype(np.int64), modality, labels.astype(np.int64), images + [[] for _ in range(n_text)])
