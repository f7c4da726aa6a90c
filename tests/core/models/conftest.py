"""Shared model fixtures for the model tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def meta_mistral3():
    """A tiny Mistral3 (pixtral vision, mistral text) on the meta device: an image-text family with no layout
    entry in core.models.groups."""
    import torch
    import transformers

    from core.models.auto import from_config

    config = transformers.Mistral3Config(
        text_config=dict(model_type="mistral", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=300, head_dim=16),
        vision_config=dict(model_type="pixtral", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                           num_attention_heads=4, head_dim=16))
    with torch.device("meta"):
        return from_config(config)
