"""A model seen as its decoder blocks: embed -> blocks[0..n) (-> norm/head). The generic block path that every
layerwise job (quantize, sensitivity, MBQ's gradient pass) uses, for any decoder whose blocks sit in one ModuleList.

The blocks' inputs are captured from the model's own forward: for one batch, every block's forward is swapped for
a recorder that keeps its hidden states and whatever else the model passes it (attention mask, position
embeddings, position ids: per block, so Gemma 3's sliding and full layers each get theirs, and Qwen3-VL's 3D
positions come out of its own rope index), and hands the hidden states on unchanged; the last one stops the
forward. A VLM's first inputs are thereby its merged image+text embeddings, made by its own vision tower and
projector. When the model changes the hidden states between two blocks (Qwen3-VL adds its deepstack visual
features after the first blocks), the recorder sees the next block's input differ from the last one's output:
that difference is kept and added back after the block in replay (`BlockCalls.added`).

Fused mixture-of-experts weights are split into one Linear per expert projection first (core/models/moe.py), so
every expert is quantized, scored and exported as its own matrix, under its on-disk name.

A family (core/models/families/) only names the ModuleList; a model no family knows still runs when its
blocks can be found (the largest ModuleList of identical modules holding Linears), which is logged once.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core.data.calib_mm import CalibRows
from core.errors import ConfigError
from core.models.families import Family, family_of
from core.models.moe import unfuse_experts

log = logging.getLogger("core.blocks")


class _Captured(Exception):
    """Raised by the last block's recorder: the rest of the model's forward is not needed."""


@dataclass
class BlockCalls:
    """One batch's block calls as the model makes them: per block the arguments after the hidden states, and what
    the model adds to a block's output before the next block (block index -> tensor), if anything."""

    args: list[tuple] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)
    added: dict[int, torch.Tensor] = field(default_factory=dict)


def find_blocks(model: nn.Module, family: Family | None) -> str:
    """The path of the decoder-block ModuleList: the family's, else the largest ModuleList of modules of one
    class that hold Linears (ties: the shallowest, i.e. the language model's rather than a vision tower's)."""
    if family is not None:
        return family.blocks
    best: tuple[int, int, str] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1 or not any(isinstance(m, nn.Linear) for m in module[0].modules()):
            continue
        linears = sum(isinstance(m, nn.Linear) for m in module.modules())
        candidate = (linears, -name.count("."), name)
        best = candidate if best is None or candidate[:2] > best[:2] else best
    if best is None:
        model_type = getattr(model.config, "model_type", "?")
        raise ConfigError("model", f"no decoder blocks found in model_type {model_type!r} (no ModuleList of "
                          "identical blocks holding Linears)")
    return best[2]


class Layerwise:
    """A model seen as embed -> blocks[0..n) (-> norm/head, never needed to calibrate)."""

    def __init__(self, model: nn.Module) -> None:
        unfuse_experts(model)  # a mixture-of-experts block's experts as one Linear each (core/models/moe.py)
        self.model, self.family = model, family_of(model)
        self.layers = find_blocks(model, self.family)
        self.blocks: nn.ModuleList = model.get_submodule(self.layers)
        if self.family is None:
            log.info("model_type %r is not a registered family: generic block path on %s (%d blocks)",
                     getattr(model.config, "model_type", "?"), self.layers, len(self.blocks))

    def block_prefix(self, index: int) -> str:
        return f"{self.layers}.{index}."

    def fp_modules(self) -> list[str]:
        """The modules outside the decoder that hold Linears and stay FP (a VLM's vision tower, projector); the
        output embeddings (lm_head) are not listed."""
        head = self.model.get_output_embeddings()
        out: list[str] = []

        def walk(module: nn.Module, prefix: str) -> None:
            for name, child in module.named_children():
                path = f"{prefix}{name}"
                if path == self.layers or child is head:
                    continue
                if self.layers.startswith(path + "."):
                    walk(child, path + ".")
                elif any(isinstance(m, nn.Linear) for m in child.modules()):
                    out.append(path)

        walk(self.model, "")
        return out

    def stem(self) -> list[torch.Tensor]:
        """Every tensor the forward up to the first block may use: all but the blocks' and an untied lm_head's."""
        inside = {id(t) for t in module_tensors(self.blocks)}
        embed = {id(t) for t in module_tensors(self.model.get_input_embeddings())}
        head = {id(t) for t in module_tensors(self.model.get_output_embeddings())} - embed
        return [t for t in module_tensors(self.model) if id(t) not in inside and id(t) not in head]

    @contextmanager
    def stem_on(self, device: torch.device) -> Iterator[None]:
        """What makes the first block's inputs (embeddings, rotary, a VLM's vision tower and projector) on `device`
        for the body, then back on its own tensors. On the CPU, LLaVA-1.5-7B's ViT-L over 128 calibration images
        took about two and a half minutes of the job (benchmarks/RESULTS.md)."""
        with borrowed(self.stem(), device):
            yield

    def final_norm(self) -> nn.Module:
        """The norm between the last block and lm_head (`<decoder>.norm`)."""
        name = self.layers.rsplit(".", 1)[0] + ".norm"
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            raise ConfigError("model", f"no final norm at {name!r}: a gradient pass needs it") from None

    @contextmanager
    def weights_on(self, device: torch.device, stream: bool) -> Iterator[Callable[[nn.Module], Any] | None]:
        """The model's weights borrowed onto `device` for a block-by-block pass (backward_by_block): all of them,
        or with `stream` (a model larger than the device) all but the blocks, yielding the `place` that borrows
        each block for its own calls."""
        if not stream:
            with borrowed(module_tensors(self.model), device):
                yield None
            return
        inside = {id(t) for t in module_tensors(self.blocks)}
        with borrowed([t for t in module_tensors(self.model) if id(t) not in inside], device):
            yield lambda block: borrowed(module_tensors(block), device)

    @torch.no_grad()
    def capture(self, ids: torch.Tensor, images: dict[str, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, BlockCalls]:
        """The first block's inputs (token embeddings, or a VLM's merged image+text embeddings with `images`: its
        pixel_values & co for the image tokens of `ids`, in order) and the batch's block calls."""
        if images and not self.fp_modules():
            raise ConfigError("calib", f"{type(self.model).__name__} takes no images (a text-only model)")
        calls, seen = BlockCalls(), []
        last = len(self.blocks) - 1

        def recorder(index: int) -> Callable[..., torch.Tensor]:
            def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
                if seen and hidden_states is not seen[-1]:  # changed between blocks
                    calls.added[index - 1] = hidden_states - seen[-1]
                seen.append(hidden_states)
                calls.args.append(args)
                calls.kwargs.append(kwargs)
                if index == last:
                    raise _Captured
                return hidden_states
            return forward

        for i, block in enumerate(self.blocks):
            block.forward = recorder(i)
        dtype = self.model.get_input_embeddings().weight.dtype
        images = {k: v.to(dtype) if v.is_floating_point() else v for k, v in (images or {}).items()}
        if images and "mm_token_type_ids" in inspect.signature(self.model.forward).parameters:
            images.setdefault("mm_token_type_ids", mm_token_types(self.model.config, ids))
        try:
            self.model(input_ids=ids, **images, use_cache=False)
        except _Captured:
            pass
        finally:
            for block in self.blocks:
                del block.forward
        if len(calls.kwargs) != len(self.blocks):
            raise RuntimeError(f"the model called {len(calls.kwargs)} of its {len(self.blocks)} blocks")
        return seen[0], calls

    def capture_rows(self, batch: CalibRows) -> tuple[torch.Tensor, BlockCalls]:
        """`capture` of a batch of calibration rows (their ids and any images), on the embeddings' device."""
        device = self.model.get_input_embeddings().weight.device
        images = {k: v.to(device) for k, v in batch.image_inputs().items()}
        # a copy: ids that came through Ray's object store are a read-only array (as_tensor would warn on CPU)
        return self.capture(torch.tensor(batch.ids, device=device), images or None)

    def run_block(self, index: int, x: torch.Tensor, calls: BlockCalls, block: nn.Module | None = None,
                  ) -> torch.Tensor:
        """Block `index` (or `block`, a copy of it) on hidden states `x` as the model calls it for that batch,
        plus whatever the model adds after it."""
        y = (self.blocks[index] if block is None else block)(x, *calls.args[index], **calls.kwargs[index])
        y = y[0] if isinstance(y, tuple) else y
        added = calls.added.get(index)
        return y if added is None else y + added


def mm_token_types(config: Any, ids: torch.Tensor) -> torch.Tensor:
    """Per token 0 text, 1 image, 2 video, 3 audio, from the config's placeholder ids (what transformers'
    processors return as mm_token_type_ids: Qwen3-VL's 3D rope positions are computed from it)."""
    types = torch.zeros_like(ids)
    for code, key in ((1, "image_token_id"), (2, "video_token_id"), (3, "audio_token_id")):
        token = getattr(config, key, None)
        if token is not None:
            types[ids == token] = code
    return types


def module_tensors(*modules: nn.Module) -> list[torch.Tensor]:
    return [t for m in modules for t in [*m.parameters(), *m.buffers()]]


class Borrow:
    """`tensors` (parameters, buffers) moved onto `device` until `give_back`, which puts their original data back
    (nothing is copied back unless `keep`: then the device values are copied into the originals first). A
    tensor listed twice (tied weights) moves once."""

    def __init__(self, tensors: Iterable[torch.Tensor], device: torch.device) -> None:
        self.homes = [(t, t.data) for t in {id(t): t for t in tensors}.values()]
        try:
            for t, data in self.homes:
                t.data = data.to(device)
        except BaseException:  # an out-of-memory error halfway still puts every tensor back
            self.give_back()
            raise

    def give_back(self, keep: bool = False) -> None:
        for t, data in self.homes:
            if keep and t.data.data_ptr() != data.data_ptr():
                data.copy_(t.data)
            t.data = data
        self.homes = []


@contextmanager
def borrowed(tensors: Iterable[torch.Tensor], device: torch.device) -> Iterator[None]:
    """`tensors` on `device` for the body (read-only use), then back on their original data (Borrow)."""
    borrow = Borrow(tensors, device)
    try:
        yield
    finally:
        borrow.give_back()


def weight_bytes(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """The bytes of `model`'s parameters and buffers, in `dtype` where given (a meta model's estimate)."""
    return sum(t.numel() * (dtype.itemsize if dtype and t.is_floating_point() else t.element_size())
               for t in module_tensors(model))


def fits_on(size: int, device: torch.device, share: float = 0.8) -> bool:
    """Whether `size` bytes of weights fit in `share` of `device`'s free memory (always, off CUDA)."""
    if device.type != "cuda":
        return True
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # free to torch, not CUDA
    return size <= share * (torch.cuda.mem_get_info(device)[0] + cached)


def block_linears_in_features(model: nn.Module) -> dict[str, int]:
    """Full names of every decoder-block Linear -> in_features (for validation before any work)."""
    lw = Layerwise(model)
    return {f"{lw.block_prefix(i)}{name}": mod.in_features for i, block in enumerate(lw.blocks)
            for name, mod in block.named_modules() if isinstance(mod, nn.Linear)}
