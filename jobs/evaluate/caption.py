"""Caption loss and accuracy of a vision-language model on held-out image+caption chats (`eval=caption`).

Each chat of `eval.path` (format mm_chat_jsonl, images under `eval.media_root`) ends with the assistant's
reference caption; everything before it is the prompt. Per model:
- caption_nll: mean next-token NLL over the reference caption's tokens (its end-of-turn token included),
  teacher-forced, the images in place;
- greedy decoding from the prompt (`eval.max_new_tokens`, stops at EOS): exact_match of the decoded
  caption with the reference (whitespace-stripped), and for every `eval.keywords` group (e.g. colour,
  shape) the share of captions whose group words equal the reference's; keyword_accuracy needs all
  groups right at once (the colour and the shape).
Chats are split over the workers in order (each scores its share with the model and the reference on its device,
one chat at a time); per-chat values are summed by the driver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from core import storage
from core.data.config import DatasetSpec
from core.data.formats import FORMATS
from core.data.multimodal import load_image, model_image_inputs, tokenize_record
from core.data.tokenize import IGNORE, ImageSpan
from core.errors import ConfigError, DataError
from core.models import MODELS
from jobs.evaluate.sharded import concat, slices


@dataclass
class Caption:
    input_ids: np.ndarray  # int32: prompt, then the reference caption
    labels: np.ndarray  # int32: the caption's tokens, IGNORE elsewhere
    prompt_len: int
    images: list[ImageSpan]
    reference: str


@dataclass
class CaptionSet:
    items: list[Caption]
    eos_id: int
    pad_id: int
    keywords: dict[str, list[str]]


def _caption_only(record: Any) -> Any:
    """The record with loss on its last message only, which must be the assistant's caption (a string)."""
    last = record.messages[-1]
    if last["role"] != "assistant" or not isinstance(last["content"], str):
        raise DataError(record.source, None, "the last message must be the assistant's caption (a string)")
    record.messages = [{**m, "loss": i == len(record.messages) - 1} for i, m in enumerate(record.messages)]
    return record


def _check_same_images(processor: Any, compare_cfg: Any, image_path: str, source: str) -> None:
    other = MODELS.get("hf").processor(compare_cfg)
    image = load_image(image_path, source)
    mine, theirs = (p.encode(p.image_token, [image]) if p else None for p in (processor, other))
    same = theirs is not None and mine.images.keys() == theirs.images.keys() and all(
        np.array_equal(mine.images[k], theirs.images[k]) for k in mine.images)
    if not same or not np.array_equal(mine.input_ids, theirs.input_ids):
        raise ConfigError("eval.compare_to", f"{compare_cfg.path}: its processor prepares images differently; "
                          "captions of different inputs do not compare")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


class CaptionEval:
    def prepare(self, spec: Any, tokenizer: Any, compare_cfg: Any | None) -> CaptionSet:
        e = spec.eval
        if e.format not in FORMATS:
            known = ", ".join(FORMATS.names())
            raise ConfigError("eval.format", f"unknown dataset format {e.format!r} (known: {known})")
        if e.num_samples < 1 or e.max_new_tokens < 1:
            raise ConfigError("eval.num_samples", "num_samples and max_new_tokens must be >= 1")
        processor = MODELS.get(spec.model.name).processor(spec.model)
        if processor is None:
            raise ConfigError("model", f"eval=caption needs a vision-language model; {spec.model.name} has no "
                              "image processor")
        path = storage.local_path(e.path, field="eval.path")
        reader = FORMATS.get(e.format)(path, DatasetSpec(path=e.path, format=e.format, media_root=e.media_root))
        items, checked = [], compare_cfg is None
        for record in reader:
            if len(items) == e.num_samples:
                break
            sample = tokenize_record(_caption_only(record), tokenizer, processor, "eval")
            if not checked and record.images:
                _check_same_images(processor, compare_cfg, record.images[0], record.source)
                checked = True
            prompt_len = int(np.flatnonzero(sample.labels != IGNORE)[0])
            items.append(Caption(sample.input_ids, sample.labels, prompt_len, sample.images,
                                 record.messages[-1]["content"]))
        if len(items) < e.num_samples:
            raise ConfigError("eval.num_samples", f"{e.path} has only {len(items)} chats (asked for {e.num_samples})")
        keywords = {str(g): [str(w).lower() for w in ws] for g, ws in dict(e.keywords).items()}
        return CaptionSet(items, tokenizer.eos_token_id, tokenizer.pad_token_id or 0, keywords)

    def split(self, inputs: CaptionSet, e: Any, parts: int) -> list[CaptionSet]:
        if parts > len(inputs.items):
            raise ConfigError("eval.num_workers", f"{parts} workers but only {len(inputs.items)} chats")
        return [replace(inputs, items=inputs.items[part]) for part in slices(len(inputs.items), parts)]

    def score_models(self, models: dict[str, Any], inputs: CaptionSet, e: Any) -> dict[str, Any]:
        raw: dict[str, Any] = {label: self.score(model, inputs, e) for label, model in models.items()}
        return {**raw, "input_tokens": sum(len(item.input_ids) for item in inputs.items)}

    def merge(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        return concat(parts)

    def score(self, model: Any, inputs: CaptionSet, e: Any) -> dict[str, Any]:
        """In the worker: each chat's summed caption NLL and token count (teacher-forced), and its greedy caption's
        ids, on the model's device."""
        import torch
        import torch.nn.functional as F

        nll, count, generated, device = [], [], [], model.device
        with torch.no_grad():
            for item in inputs.items:
                ids = torch.tensor(item.input_ids, dtype=torch.long, device=device)[None]
                images = {k: v.to(device) for k, v in model_image_inputs(item.images).items()}
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **images).logits[0, :-1].float()
                target = torch.tensor(item.labels, dtype=torch.long, device=device)[1:]
                nll.append(F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum").item())
                count.append(int((target != IGNORE).sum()))
                prompt = ids[:, : item.prompt_len]
                out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **images,
                                     max_new_tokens=e.max_new_tokens, do_sample=False,
                                     eos_token_id=inputs.eos_id, pad_token_id=inputs.pad_id)
                generated.append(out[0, item.prompt_len :].tolist())
        return {"nll": nll, "tokens": count, "generated": generated}

    def summarize(self, raw: dict[str, Any], inputs: CaptionSet, tokenizer: Any) -> dict[str, float]:
        texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in raw["generated"]]
        refs = [item.reference.strip() for item in inputs.items]
        tokens = float(np.sum(raw["tokens"]))  # per chat, in order (any number of workers: the same sums)
        metrics = {"caption_nll": float(np.sum(raw["nll"], dtype=np.float64)) / tokens,
                   "exact_match": float(np.mean([t == r for t, r in zip(texts, refs, strict=True)]))}
        right = np.ones(len(refs), bool)
        for group, vocab in inputs.keywords.items():
            hits = np.array([[w for w in words(t) if w in vocab] == [w for w in words(r) if w in vocab]
                             for t, r in zip(texts, refs, strict=True)])
            metrics[f"{group}_accuracy"] = float(hits.mean())
            right &= hits
        if inputs.keywords:
            metrics["keyword_accuracy"] = float(right.mean())
        metrics.update(samples=float(len(refs)), caption_tokens=tokens)
        return metrics

    def columns(self, inputs: CaptionSet) -> list[tuple[str, str, str]]:
        groups = [(f"{g} acc", f"{g}_accuracy", ".3f") for g in inputs.keywords]
        every = [("+".join(inputs.keywords) + " acc", "keyword_accuracy", ".3f")] if inputs.keywords else []
        return [("caption nll", "caption_nll", ".4f"), ("exact match", "exact_match", ".3f"), *every, *groups,
                ("samples", "samples", ".0f")]

    def compare(self, model: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
        out = {"caption_nll_ratio": model["caption_nll"] / reference["caption_nll"]}
        out.update({f"{k}_delta": model[k] - reference[k] for k in model if k.endswith(("_match", "_accuracy"))})
        return out


CAPTION = CaptionEval()
