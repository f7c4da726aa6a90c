"""`trainer.zero.granularity=block`: ZeRO-3's fetch/release hooks on whole blocks instead of every submodule.

DeepSpeed hooks every module of the model (pre/post forward, pre/post backward) and wraps every Linear in its own
autograd function; on a GPU those are host-side Python calls between kernels, hundreds per layer and step, and a
profile of a 1.7B step on one H100 had the GPU idle for 46% of it (benchmarks/RESULTS.md). Marked as DeepSpeed
"leaf" modules, the language model's blocks (its decoder layers, as transformers' `_no_split_modules` names them)
are fetched and released as one unit, so each block costs one set of hooks. The parameters of a block are then all
gathered at once: the same bytes, in fewer, larger collectives.
"""

from __future__ import annotations

from typing import Any


def decoder(model: Any) -> Any:
    return model.get_decoder() if hasattr(model, "get_decoder") else model


def block_classes(model: Any) -> list[type]:
    """The classes of the language model's modules that transformers names as the model's unsplittable blocks (its
    decoder layers). A VLM's vision blocks keep DeepSpeed's per-module hooks: as leaf modules (LLaVA's CLIP encoder
    layers and embeddings) their parameters were not gathered again for the backward (tests/jobs/test_family_matrix.py
    caught it)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return sorted({type(m) for m in decoder(model).modules() if type(m).__name__ in names}, key=lambda c: c.__name__)


def hook_blocks(model: Any) -> list[type]:
    """Mark the language model's blocks as ZeRO-3 leaf modules (before deepspeed.initialize registers the hooks;
    instances of the same classes elsewhere, e.g. in a vision tower, are left alone); the classes marked, none when
    the model names no blocks (then every module keeps its own hooks)."""
    from deepspeed.utils import set_z3_leaf_modules

    classes = block_classes(model)
    if classes:
        set_z3_leaf_modules(decoder(model), classes)
    return classes
