"""The image side of a vision-language model, as the data pipeline, SFT batches and calibration use it.

`MODELS.get(name).processor(cfg)` returns an `ImageTextProcessor` for a VLM and None for a text-only
model. It wraps the model's transformers processor (LlavaProcessor, LlavaNextProcessor, a directory's
AutoProcessor, ...) behind four calls:

    proc = source.processor(cfg)
    enc = proc.encode("Describe <image> please", [pil_image])   # one text segment and its images, in order
    enc.input_ids          # int32 [T]: each `proc.image_token` expanded to the image's feature count
    enc.images             # {"pixel_values": float32 [n, ...], ...}: the model's image inputs for this segment
    proc.image_token_id    # the id the expanded placeholder tokens carry (never cut through them)
    proc.tokens_per_image((height, width))   # features one image of that size becomes (llava_tiny: 64)
    batch = proc.collate([enc.images, ...])  # torch tensors for model(**batch, input_ids=...)

`encode` adds no special tokens (a segment of a chat rendered by the tokenizer's template, like
core/data/tokenize.py does for text). `collate` concatenates along the first dim and zero-pads the
others (LLaVA-NeXT pads its tile count; its image_sizes say how many tiles are real).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image

TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")  # per-token, not images


@dataclass
class Encoded:
    input_ids: np.ndarray  # int32 [T]
    images: dict[str, np.ndarray]  # the model's image inputs; first dim per image (Qwen-VL: per patch)
    num_images: int


class ImageTextProcessor:
    def __init__(self, hf_processor: Any) -> None:
        self.hf = hf_processor  # saved next to exported weights (save_pretrained)
        self.image_token: str = hf_processor.image_token
        self.image_token_id: int = int(hf_processor.tokenizer.convert_tokens_to_ids(self.image_token))

    def encode(self, text: str, images: Sequence[Image.Image] = ()) -> Encoded:
        found = text.count(self.image_token)
        if found != len(images):
            raise ValueError(f"{found} {self.image_token} placeholder(s) in the text but {len(images)} image(s)")
        out = self.hf(text=[text], images=list(images) or None, return_tensors="np", add_special_tokens=False)
        ids = np.asarray(out["input_ids"][0], np.int32)
        tensors = {k: np.asarray(v) for k, v in out.items() if k not in TEXT_KEYS}
        return Encoded(ids, tensors if images else {}, len(images))

    def tokens_per_image(self, size: tuple[int, int]) -> int:
        """Placeholder tokens one image of (height, width) pixels expands to: counted on the processor's
        own output, so it is exact for fixed-size (LLaVA) and size-dependent (LLaVA-NeXT, Qwen-VL) models."""
        from PIL import Image

        blank = Image.new("RGB", (size[1], size[0]))
        return int((self.encode(self.image_token, [blank]).input_ids == self.image_token_id).sum())

    @staticmethod
    def collate(images: Sequence[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        import torch

        present = [i for i in images if i]
        if not present:
            return {}
        out = {}
        for key in present[0]:
            arrays = [i[key] for i in present]
            shape = np.max([a.shape for a in arrays], axis=0)
            padded = [np.pad(a, [(0, 0)] + [(0, s - d) for s, d in zip(shape[1:], a.shape[1:], strict=True)])
                      for a in arrays]
            out[key] = torch.from_numpy(np.concatenate(padded))
        return out

    def save_pretrained(self, directory: str) -> None:
        self.hf.save_pretrained(directory)
