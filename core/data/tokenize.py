"""Chat records -> token ids + labels, with loss on assistant turns (a message's `loss` overrides).

Each message is rendered through the tokenizer's own chat template as the growth of the rendered
prefix, so the same code serves the byte tokenizer and any Hugging Face chat template.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import ConfigError, DataError

IGNORE = -100


@dataclass
class ImageSpan:
    """One image's placeholder tokens [start, stop) in a sample or packed row, and its model inputs
    (pixel_values, image_sizes, ...: core/data/multimodal.py); never cut, never trained on."""

    start: int
    stop: int
    inputs: dict[str, np.ndarray]

    def shifted(self, offset: int) -> ImageSpan:
        return ImageSpan(self.start + offset, self.stop + offset, self.inputs)


@dataclass
class TokenizedSample:
    input_ids: np.ndarray  # int32 [T]
    labels: np.ndarray  # int32 [T], IGNORE where no loss
    source: str  # "file:line"
    images: list[ImageSpan] = field(default_factory=list)  # in token order

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def loss_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())


def render_chat(tokenizer: Any, messages: list[dict], generation_prompt: bool = False) -> str:
    """Messages through the model's chat template (a tokenizer without one is the model directory's fault)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("model.path", "the tokenizer has no chat template (no chat_template in "
                          "tokenizer_config.json, no chat_template.jinja): chat data needs one")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _wants_loss(message: dict) -> bool:
    return bool(message.get("loss", message["role"] == "assistant"))


def _strip_loss_keys(messages: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "loss"} for m in messages]


def tokenize_chat(messages: list[dict], tokenizer: Any, source: str) -> TokenizedSample:
    messages = _strip_loss_keys(messages) if any("loss" in m for m in messages) else messages
    flags = [_wants_loss(m) for m in messages]
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""

    def add(text: str, trainable: bool) -> None:
        tokens = tokenizer.encode(text, add_special_tokens=False) if text else []
        ids.extend(tokens)
        labels.extend(tokens if trainable else [IGNORE] * len(tokens))

    for i, message in enumerate(messages):
        full = render_chat(tokenizer, messages[: i + 1])
        if not full.startswith(rendered):
            raise DataError(source, None, "the chat template renders earlier turns differently once a turn is added")
        header = ""
        if flags[i] and message["role"] == "assistant" and i > 0:
            with_prompt = render_chat(tokenizer, messages[:i], generation_prompt=True)
            if with_prompt.startswith(rendered) and full.startswith(with_prompt):
                header = with_prompt[len(rendered):]  # "<|im_start|>assistant\n": not trained on
        add(header, False)
        add(full[len(rendered) + len(header):], flags[i])
        rendered = full
    sample = TokenizedSample(np.asarray(ids, np.int32), np.asarray(labels, np.int32), source)
    return sample
