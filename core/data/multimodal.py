"""Multimodal chat (`format: mm_chat_jsonl`): OpenAI-style messages whose content parts hold images.

    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "img/0001.png"}},
                                               {"type": "text", "text": "What is in the image?"}]},
                  {"role": "assistant", "content": "A red circle."}]}

- Image urls: a path relative to the dataset's `media_root` (default: the JSONL's directory; local or
  s3://), an absolute path, or file://. A missing or undecodable image is a DataError naming the
  JSONL's file:line and the image path.
- Tokens: the chat is tokenized as text (core/data/tokenize.py: chat template, assistant-only loss,
  per-message `loss`) with each image part rendered as the model's image placeholder; each placeholder
  is then replaced by what the model's processor makes of it (`ImageTextProcessor.encode`: the
  placeholder repeated once per image feature, e.g. 64 for llava_tiny). Image tokens never carry a label.
- Pixels: the processor's output is kept per image (`ImageSpan.inputs`), floats as float16. That is
  the one model-agnostic place to cut (normalisation, resizing and LLaVA-NeXT tiling already done, so
  workers run no image code), half of float32 on the way through Ray's object store, and finer than
  the bf16 the model computes in (relative error 2^-11 vs 2^-8). Workers get float32 (jobs/sft/batches.py).
- Truncation (core/data/sft.py) never cuts through an image's tokens: a sample whose cut would is
  dropped and counted (`truncation=right|drop`) or the job fails (`truncation=error`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core import storage
from core.data.formats import Record, read_chat_jsonl
from core.data.tokenize import IGNORE, ImageSpan, TokenizedSample, tokenize_chat
from core.errors import ConfigError, DataError


def media_root(path: Path, spec: Any) -> str:
    """Where relative image urls resolve: spec.media_root, else the dataset file's directory."""
    if spec is not None and spec.media_root:
        return storage.absolute(spec.media_root)
    if spec is not None and storage.scheme(spec.path) != "file":
        return spec.path.rsplit("/", 1)[0]
    return str(path.parent)


def resolve_image(url: str, root: str, source: str) -> str:
    """A readable local path for an image url, or a DataError naming the record and the image."""
    if url.startswith("file://"):
        url = url[len("file://"):]
    elif "://" in url and storage.scheme(url) != "s3":
        raise DataError(source, None, f"image {url}: only local paths, file:// and s3:// are read")
    where = url if "://" in url or Path(url).is_absolute() else storage.join(root, url)
    if storage.scheme(where) == "file":
        if not Path(where).is_file():
            raise DataError(source, None, f"image {where}: no such file")
        return where
    try:
        return str(storage.local_path(where, field="image"))  # s3: a cached download
    except ConfigError:
        raise DataError(source, None, f"image {where}: no such file") from None


def read_mm_chat_jsonl(path: Path, spec: Any = None) -> Iterator[Record]:
    root = media_root(path, spec)
    for record in read_chat_jsonl(path, spec, images=True):
        record.images = [resolve_image(url, root, record.source) for url in record.images]
        yield record


def load_image(path: str, source: str) -> Any:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # decodes every pixel now: a truncated file fails here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise DataError(source, None, f"image {path}: not a readable image ({reason})") from None


def compact(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float16) if np.issubdtype(v.dtype, np.floating) else v for k, v in inputs.items()}


def _template_parts(message: dict) -> dict:
    """Image parts as {"type": "image"}: what Hugging Face chat templates (and the byte tokenizer's) render."""
    if not isinstance(message["content"], list):
        return message
    parts = [{"type": "image"} if p["type"] == "image_url" else p for p in message["content"]]
    return {**message, "content": parts}


def tokenize_multimodal(record: Record, tokenizer: Any, processor: Any) -> TokenizedSample:
    """The chat's tokens with every image placeholder expanded to the image's feature tokens (no labels)."""
    text = tokenize_chat([_template_parts(m) for m in record.messages], tokenizer, record.source)
    found = np.flatnonzero(text.input_ids == processor.image_token_id)
    if len(found) != len(record.images):
        raise DataError(record.source, None, f"the chat template rendered {len(found)} image placeholder(s) "
                        f"for {len(record.images)} image(s) (is {processor.image_token} in a text part?)")
    ids, labels, spans, last, length = [], [], [], 0, 0
    for pos, path in zip(found.tolist(), record.images, strict=True):
        encoded = processor.encode(processor.image_token, [load_image(path, record.source)])
        ids += [text.input_ids[last:pos], encoded.input_ids.astype(np.int32)]
        labels += [text.labels[last:pos], np.full(len(encoded.input_ids), IGNORE, np.int32)]
        length += pos - last
        spans.append(ImageSpan(length, length + len(encoded.input_ids), compact(encoded.images)))
        length += len(encoded.input_ids)
        last = pos + 1
    ids.append(text.input_ids[last:])
    labels.append(text.labels[last:])
    return TokenizedSample(np.concatenate(ids), np.concatenate(labels), record.source, spans)


def tokenize_record(record: Record, tokenizer: Any, processor: Any | None, field: str) -> TokenizedSample:
    """Text-only records through tokenize_chat; records with images need the model's image processor."""
    if not record.images:
        return tokenize_chat(record.messages, tokenizer, record.source)
    if processor is None:
        raise ConfigError(field, f"{record.source} has images but the model has no image processor "
                          "(use a vision-language model, e.g. model=llava_tiny)")
    return tokenize_multimodal(record, tokenizer, processor)


def model_image_inputs(spans: list[ImageSpan]) -> dict[str, Any]:
    """The spans' image inputs as torch tensors in token order (the order the model fills placeholders),
    floats as float32 (vision towers cast to their own dtype), for model(**inputs, input_ids=...)."""
    from core.models.vlm import ImageTextProcessor

    batch = ImageTextProcessor.collate([span.inputs for span in spans])
    return {k: v.float() if v.is_floating_point() else v for k, v in batch.items()}


def image_cut(sample: TokenizedSample, length: int) -> int | None:
    """Index of the image whose tokens a cut at `length` would split, else None."""
    return next((i for i, span in enumerate(sample.images) if span.start < length < span.stop), None)


def truncate(sample: TokenizedSample, length: int) -> TokenizedSample:
    """The first `length` tokens, with the images that lie wholly inside them (never call it through one)."""
    assert image_cut(sample, length) is None, "truncate() through an image's tokens"
    kept = [span for span in sample.images if span.stop <= length]
    return TokenizedSample(sample.input_ids[:length], sample.labels[:length], sample.source, kept)
