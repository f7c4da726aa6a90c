"""`model=hf`: a Hugging Face format directory, local or s3:// (a cached download, through core.storage).

The model class follows the config (core/models/auto.py): a VLM directory (LLaVA, LLaVA-NeXT, Qwen-VL)
loads with AutoModelForImageTextToText and its processor with AutoProcessor; a text model with
AutoModelForCausalLM."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core import storage
from core.errors import ConfigError
from core.models.files import check_model_dir

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from core.models.config import ModelConfig
    from core.models.vlm import ImageTextProcessor


class PretrainedDir:
    def _local(self, cfg: ModelConfig) -> Path:
        if not cfg.path:
            raise ConfigError("model.path", "required for model=hf (a Hugging Face model directory, local or s3://)")
        return storage.local_path(cfg.path, field="model.path")

    def validate(self, cfg: ModelConfig) -> None:
        check_model_dir(self._local(cfg), "model.path")

    def hf_config(self, cfg: ModelConfig) -> PretrainedConfig:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(self._local(cfg), trust_remote_code=cfg.trust_remote_code)
        for key, value in cfg.overrides.items():
            setattr(config, key, value)
        return config

    def tokenizer(self, cfg: ModelConfig) -> PreTrainedTokenizerBase:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self._local(cfg), trust_remote_code=cfg.trust_remote_code)

    def processor(self, cfg: ModelConfig) -> ImageTextProcessor | None:
        from transformers import AutoProcessor

        from core.models.auto import is_image_text
        from core.models.vlm import ImageTextProcessor

        if not is_image_text(self.hf_config(cfg)):
            return None
        missing = ConfigError("model.path", f"{cfg.path}: a vision-language model without an image processor "
                              "(no processor_config.json / preprocessor_config.json with an image token)")
        try:
            hf = AutoProcessor.from_pretrained(self._local(cfg), trust_remote_code=cfg.trust_remote_code)
        except OSError:
            raise missing from None
        if not hasattr(hf, "image_processor") or not getattr(hf, "image_token", None):
            raise missing
        return ImageTextProcessor(hf)

    def build(self, cfg: ModelConfig, hf_config: PretrainedConfig, dtype: torch.dtype) -> PreTrainedModel:
        from core.models.auto import auto_class, supported_attention

        return auto_class(hf_config).from_pretrained(
            self._local(cfg),
            config=hf_config,
            dtype=dtype,
            attn_implementation=supported_attention(hf_config, cfg.attn_implementation),
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=True,
        )


PRETRAINED = PretrainedDir()
