"""Model registry: name -> how to get its config, tokenizer and weights."""

from core.models.build import build_model
from core.models.config import ModelConfig
from core.models.registry import MODELS, ModelSource

__all__ = ["MODELS", "ModelConfig", "ModelSource", "build_model"]
