"""Vision-language models built from transformers configs with random init, the byte tokenizer (its
`<image>` token is the placeholder) and an image processor made here: nothing is downloaded.

llava_tiny: LlavaForConditionalGeneration; a CLIP vision tower (3 layers, hidden 128, 64x64 px,
  patch 8: 64 patch features per image, the CLS feature dropped), a 2-layer GELU MLP projector and a
  qwen3_tiny-shaped language model (3 layers, hidden 512, tied embeddings). Small enough for CPU tests.
llava_next_small: LLaVA-1.6's structure (LlavaNextForConditionalGeneration: CLIP-L/14-336 geometry,
  anyres tiles from the 1.6 grid pinpoints, image_newline, feature layer -2, Llama language model) at
  reduced width and depth, so it builds on CPU in about a second; for inspection and group tests.

`model.overrides` sets LlavaConfig fields; `text_config` / `vision_config` take dicts of their fields,
e.g. `+model.overrides.text_config.num_hidden_layers=2`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core.models.byte_tokenizer import SPECIAL_IDS, SPECIAL_TOKENS, VOCAB_SIZE
from core.models.tiny import ConfigBuiltModel

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_ID = 256 + SPECIAL_TOKENS.index(IMAGE_TOKEN)  # byte tokenizer: 256 bytes, then the specials
MEAN_STD = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}  # pixels to [-1, 1]
LLAVA_16_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _check_fields(config_class: type, fields: dict, what: str) -> None:
    unknown = sorted(set(fields) - set(config_class().to_dict()))
    if unknown:
        raise ValueError(f"unknown {what} field(s): {', '.join(unknown)}")


def vlm_config(config_class_name: str, vision: dict, text_class_name: str, text: dict, **top: Any,
               ) -> Callable[[dict], PretrainedConfig]:
    """A config factory: the shape given here, then model.overrides (sub-config overrides are dicts)."""

    def make(overrides: dict) -> PretrainedConfig:
        import transformers

        vision_class, text_class = transformers.CLIPVisionConfig, getattr(transformers, text_class_name)
        config_class = getattr(transformers, config_class_name)
        overrides = dict(overrides)
        vision_over, text_over = dict(overrides.pop("vision_config", {})), dict(overrides.pop("text_config", {}))
        _check_fields(vision_class, vision_over, "vision_config")
        _check_fields(text_class, text_over, "text_config")
        _check_fields(config_class, overrides, config_class_name)
        text_fields = {"vocab_size": VOCAB_SIZE, **SPECIAL_IDS, **text, **text_over}
        return config_class(vision_config=vision_class(**{**vision, **vision_over}),
                            text_config=text_class(**text_fields), **{**top, **overrides})

    return make


def _image_processor(**fields: Any) -> Any:
    import transformers

    # the PIL implementation (transformers' fallback without torchvision) wherever it exists: same pixels everywhere
    name = fields.pop("class_name")
    cls = getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)
    return cls(do_convert_rgb=True, **MEAN_STD, **fields)


def llava_processor(tokenizer: PreTrainedTokenizerBase, pixels: int = 64, patch: int = 8) -> Any:
    """LLaVA-1.5's processor (CLIP resize + centre crop to `pixels`, (pixels/patch)^2 tokens per image)."""
    from transformers import LlavaProcessor

    images = _image_processor(class_name="CLIPImageProcessor", size={"shortest_edge": pixels},
                              crop_size={"height": pixels, "width": pixels})
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=patch, image_token=IMAGE_TOKEN,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=tokenizer.chat_template)


def llava_tiny_processor(tokenizer: PreTrainedTokenizerBase) -> Any:
    return llava_processor(tokenizer, pixels=64, patch=8)


def llava15_processor(tokenizer: PreTrainedTokenizerBase) -> Any:
    return llava_processor(tokenizer, pixels=336, patch=14)


def llava_next_processor(tokenizer: PreTrainedTokenizerBase) -> Any:
    from transformers import LlavaNextProcessor

    images = _image_processor(class_name="LlavaNextImageProcessor", size={"shortest_edge": 336},
                              crop_size={"height": 336, "width": 336}, image_grid_pinpoints=LLAVA_16_PINPOINTS)
    return LlavaNextProcessor(image_processor=images, tokenizer=tokenizer, patch_size=14, image_token=IMAGE_TOKEN,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=tokenizer.chat_template)


LLAVA_TINY = ConfigBuiltModel(
    vlm_config("LlavaConfig",
               vision=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                           image_size=64, patch_size=8),
               text_class_name="Qwen3Config",
               text=dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=3, num_attention_heads=8,
                         num_key_value_heads=4, head_dim=64, max_position_embeddings=8192, rope_theta=1_000_000.0,
                         tie_word_embeddings=True),
               # the last layer's patch features feed the projector (-2, LLaVA's choice, would leave a
               # tiny tower's last layer untrained); "default" drops the CLS feature: 64 tokens per image
               image_token_id=IMAGE_TOKEN_ID, vision_feature_layer=-1, vision_feature_select_strategy="default",
               image_seq_length=64, projector_hidden_act="gelu", tie_word_embeddings=True),
    make_processor=llava_tiny_processor,
)

LLAVA_NEXT_SMALL = ConfigBuiltModel(
    vlm_config("LlavaNextConfig",
               vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                           image_size=336, patch_size=14),
               text_class_name="LlamaConfig",
               text=dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=8, max_position_embeddings=4096, tie_word_embeddings=False),
               image_token_id=IMAGE_TOKEN_ID, image_grid_pinpoints=LLAVA_16_PINPOINTS, vision_feature_layer=-2,
               vision_feature_select_strategy="default", projector_hidden_act="gelu", tie_word_embeddings=False),
    make_processor=llava_next_processor,
)

# LLaVA-1.5-7B's shape for GPU benchmarks: CLIP ViT-L/14-336 (24 layers, hidden 1024: 576 tokens per image,
# features of layer -2), 2-layer GELU MLP projector, Llama-2-7B language model (vocab 32000 as the original,
# of which the byte tokenizer uses the first few hundred ids). Random init; about 7.1B parameters.
LLAVA15_7B = ConfigBuiltModel(
    vlm_config("LlavaConfig",
               vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=336, patch_size=14, projection_dim=768),
               text_class_name="LlamaConfig",
               text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, max_position_embeddings=4096, vocab_size=32000,
                         tie_word_embeddings=False),
               image_token_id=IMAGE_TOKEN_ID, vision_feature_layer=-2, vision_feature_select_strategy="default",
               image_seq_length=576, projector_hidden_act="gelu", tie_word_embeddings=False),
    make_processor=llava15_processor,
)
