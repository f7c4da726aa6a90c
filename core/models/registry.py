"""Every model the project knows, by name. A source gives a model's config (cheap, no weights),
its tokenizer, its image processor (VLMs; None for text-only models), and the model itself; the
caller decides the context (zero.Init, device, dtype). Module groups: core/models/groups.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from core.registry import Registry

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from core.models.config import ModelConfig
    from core.models.vlm import ImageTextProcessor


class ModelSource(Protocol):
    def hf_config(self, cfg: ModelConfig) -> PretrainedConfig: ...

    def tokenizer(self, cfg: ModelConfig) -> PreTrainedTokenizerBase: ...

    def processor(self, cfg: ModelConfig) -> ImageTextProcessor | None:
        """A VLM's image+text processor (core/models/vlm.py); None for a text-only model."""

    def build(self, cfg: ModelConfig, hf_config: PretrainedConfig, dtype: torch.dtype) -> PreTrainedModel: ...

    def validate(self, cfg: ModelConfig) -> None: ...


MODELS: Registry[ModelSource] = Registry("model", "model.name")
MODELS.register("qwen3_tiny", "core.models.tiny:QWEN3_TINY")
MODELS.register("qwen3_1p7b", "core.models.tiny:QWEN3_1P7B")
MODELS.register("llava_tiny", "core.models.tiny_vlm:LLAVA_TINY")
MODELS.register("llava_next_small", "core.models.tiny_vlm:LLAVA_NEXT_SMALL")
MODELS.register("llava15_7b", "core.models.tiny_vlm:LLAVA15_7B")
MODELS.register("hf", "core.models.pretrained:PRETRAINED")
