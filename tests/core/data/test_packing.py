"""Packed rows give the loss of the same samples unpacked: position ids restart per sample and the
attention path (transformers' sdpa mask built from position ids) keeps samples apart."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from core.data.packing import pack, plan_bins, unpacked
from core.data.tokenize import IGNORE, tokenize_chat
from core.models.config import ModelConfig
from core.models.tiny import QWEN3_TINY
from jobs.sft.batches import causal_lm_loss, collate
from tests.conftest import REPO

TOLERANCE = 1e-6  # float64 model; transformers' loss upcasts logits to float32 only


def _samples(tokenizer, count: int = 5):
    lines = (REPO / "data/demo/arithmetic.jsonl").read_text().splitlines()[:count]
    samples = []
    for i, line in enumerate(lines):
        obj = json.loads(line)
        samples.append(tokenize_chat(obj["messages"] if isinstance(obj, dict) else obj, tokenizer, f"x:{i}"))
    return samples


def _model():
    cfg = ModelConfig(name="qwen3_tiny", overrides={"num_hidden_layers": 2})
    torch.manual_seed(0)
    return QWEN3_TINY.build(cfg, QWEN3_TINY.hf_config(cfg), torch.float64).eval(), QWEN3_TINY.tokenizer(cfg)


def _reference_loss(model, samples) -> float:
    """Each sample alone, through the ordinary padded + attention_mask path."""
    total, count = 0.0, 0
    for row in unpacked(samples):
        ids = torch.tensor(row.input_ids, dtype=torch.long)[None]
        labels = torch.tensor(row.labels, dtype=torch.long)[None]
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, :-1]
        target = labels[0, 1:]
        total += F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum").item()
        count += int((target != IGNORE).sum())
    return total / count


def test_packed_loss_equals_unpacked_loss() -> None:
    model, tokenizer = _model()
    samples = _samples(tokenizer)
    rows = pack(samples, max_len=512)
    assert len(rows) < len(samples)  # several samples really share a row
    batch = collate(rows, tokenizer.pad_token_id, pad_to=512)  # padding tail is its own span too
    with torch.no_grad():
        packed = causal_lm_loss(model, batch, batch.targets).item()
        reference = _reference_loss(model, samples)
    assert abs(packed - reference) < TOLERANCE, (packed, reference)


def test_without_position_restart_the_loss_differs() -> None:
    """The check above can fail: positions running across samples let them attend to each other."""
    model, tokenizer = _model()
    samples = _samples(tokenizer)
    batch = collate(pack(samples, max_len=512), tokenizer.pad_token_id)
    flat_positions = torch.arange(batch.input_ids.shape[1])[None].expand_as(batch.input_ids)
    with torch.no_grad():
        batch.position_ids = flat_positions
        leaky = causal_lm_loss(model, batch, batch.targets).item()
        reference = _reference_loss(model, samples)
    assert abs(leaky - reference) > 1e-4


def test_plan_bins_fills_rows_without_exceeding_them() -> None:
    lengths = [300, 200, 100, 250, 150, 400, 50]
    bins = plan_bins(lengths, 512)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 512 for b in bins)
    assert plan_bins(lengths, 512) == bins  # deterministic
