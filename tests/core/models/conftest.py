"""Shared model fixtures for the model tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def meta_unknown_vlm():
    """A tiny Gemma 3 VLM (SigLIP vision, Gemma 3 text) on the meta device: an image-text model no registered
    family knows (core/models/families/ has Gemma 3's text model only)."""
    import torch
    import transformers

    from core.models.auto import from_config

    config = transformers.Gemma3Config(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300, head_dim=16),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8), mm_tokens_per_image=4)
    with torch.device("meta"):
        return from_config(config)
