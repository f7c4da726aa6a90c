"""Which transformers class a config builds, and a weightless (meta-device) copy of a model.

One rule for every source: a config that transformers maps to an image-text-to-text model (LLaVA,
LLaVA-NeXT, Qwen2/2.5/3-VL, ...) builds that model; anything else builds a causal LM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

    from core.models.config import ModelConfig
    from core.models.registry import ModelSource


def is_image_text(hf_config: PretrainedConfig) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    remote_classes = getattr(hf_config, "auto_map", None) or {}  # trust_remote_code models name their classes
    return (hf_config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
            or "AutoModelForImageTextToText" in remote_classes)


def auto_class(hf_config: PretrainedConfig) -> Any:
    """The transformers Auto class that builds (from_config) or loads (from_pretrained) this config."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if is_image_text(hf_config) else AutoModelForCausalLM


def supported_attention(hf_config: PretrainedConfig, requested: str) -> str:
    """`requested`, unless it is sdpa and the model's family runs another (gpt-oss: transformers refuses sdpa)."""
    from core.models.families import family_of_config

    family = family_of_config(hf_config)
    return family.attention if requested == "sdpa" and family is not None and family.attention else requested


def from_config(hf_config: PretrainedConfig, trust_remote_code: bool = False, **kwargs: Any) -> PreTrainedModel:
    if "attn_implementation" in kwargs:
        kwargs["attn_implementation"] = supported_attention(hf_config, kwargs["attn_implementation"])
    return auto_class(hf_config).from_config(hf_config, trust_remote_code=trust_remote_code, **kwargs)


def meta_model(source: ModelSource, cfg: ModelConfig) -> PreTrainedModel:
    """The model's modules and parameter shapes without weights (meta device): milliseconds, no memory,
    only the config is read. What inspection and freeze validation need; never loads a checkpoint."""
    import torch

    with torch.device("meta"):
        return from_config(source.hf_config(cfg), cfg.trust_remote_code, attn_implementation=cfg.attn_implementation)
