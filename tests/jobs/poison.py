"""Checks that a streamed pass borrows every weight it uses (core/blocks/layerwise.py weights_on): the model
is filled with NaN and `borrowed` hands tensors their real values only for its body, so a module used without
being borrowed turns the result into NaN. On CPU, where a real borrow moves nothing, this is what can fail."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pytest
import torch

import core.blocks.layerwise as layerwise


def poison_unborrowed(monkeypatch: pytest.MonkeyPatch, lw: layerwise.Layerwise) -> None:
    tensors = [t for t in layerwise.module_tensors(lw.model) if t.is_floating_point()]
    real = {id(t): t.data for t in tensors}
    for t in tensors:
        t.data = torch.full_like(t.data, float("nan"))

    @contextmanager
    def borrow_real_values(borrowed: Iterable[torch.Tensor], _device: torch.device) -> Iterator[None]:
        borrowed = [t for t in {id(t): t for t in borrowed}.values() if id(t) in real]
        away = [t.data for t in borrowed]
        try:
            for t in borrowed:
                t.data = real[id(t)]
            yield
        finally:
            for t, data in zip(borrowed, away, strict=True):
                t.data = data

    monkeypatch.setattr(layerwise, "borrowed", borrow_real_values)
