"""Models built from a transformers config with random init and the byte tokenizer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError
from core.models.byte_tokenizer import SPECIAL_IDS, VOCAB_SIZE, byte_tokenizer

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from core.models.config import ModelConfig
    from core.models.vlm import ImageTextProcessor


@dataclass(frozen=True)
class ConfigBuiltModel:
    make_config: Callable[[dict], PretrainedConfig]
    make_processor: Callable[[PreTrainedTokenizerBase], Any] | None = None  # VLMs: tokenizer -> HF processor

    def validate(self, cfg: ModelConfig) -> None:
        if cfg.path:
            raise ConfigError("model.path", f"model {cfg.name!r} is built from a config; use model=hf to load a path")
        self.hf_config(cfg)

    def hf_config(self, cfg: ModelConfig) -> PretrainedConfig:
        try:
            return self.make_config(dict(cfg.overrides))
        except (TypeError, ValueError) as err:
            raise ConfigError("model.overrides", str(err).splitlines()[0]) from err

    def tokenizer(self, cfg: ModelConfig) -> PreTrainedTokenizerBase:
        return byte_tokenizer()

    def processor(self, cfg: ModelConfig) -> ImageTextProcessor | None:
        from core.models.vlm import ImageTextProcessor

        return ImageTextProcessor(self.make_processor(self.tokenizer(cfg))) if self.make_processor else None

    def build(self, cfg: ModelConfig, hf_config: PretrainedConfig, dtype: torch.dtype) -> PreTrainedModel:
        from core.models.auto import from_config

        return from_config(hf_config, dtype=dtype, attn_implementation=cfg.attn_implementation)


def qwen3(**shape: Any) -> Callable[[dict], PretrainedConfig]:
    """A Qwen3 config factory: `shape` over common defaults, then the spec's model.overrides."""

    def make(overrides: dict) -> PretrainedConfig:
        from transformers import Qwen3Config

        unknown = sorted(set(overrides) - set(Qwen3Config().to_dict()))
        if unknown:
            raise ValueError(f"unknown Qwen3Config field(s): {', '.join(unknown)}")
        fields = dict(vocab_size=VOCAB_SIZE, max_position_embeddings=8192, rope_theta=1_000_000.0,
                      tie_word_embeddings=True, **SPECIAL_IDS)
        return Qwen3Config(**{**fields, **shape, **overrides})

    return make


# XTuner's install-check size: 3 layers, hidden 512
QWEN3_TINY = ConfigBuiltModel(qwen3(hidden_size=512, intermediate_size=1536, num_hidden_layers=3,
                                    num_attention_heads=8, num_key_value_heads=4, head_dim=64))
# Qwen3-1.7B's shape (random init), for benchmarks
QWEN3_1P7B = ConfigBuiltModel(qwen3(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                                    num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                                    vocab_size=151936, max_position_embeddings=40960))
