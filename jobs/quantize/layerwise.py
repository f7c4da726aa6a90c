"""The one place that knows where a model keeps its decoder blocks, embeddings and rotary module, and how a
block is called on captured hidden states. Keyed by family (config.model_type); a new family is one ARCHS
entry, the algorithms' own wiring lives in algorithms/mappings.py.

A vision-language model (LLaVA, LLaVA-NeXT/OneVision) is its language model's blocks: the first block's
inputs for an image+text sample are the merged embeddings (token embeddings with the projector's image
features placed at the image tokens), computed by the model's own forward up to its language model.
The vision tower and projector are never calibrated or quantized here (`Arch.fp_modules`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.data.calib_mm import CalibRows
from core.errors import ConfigError


class _Captured(Exception):
    """Raised by the language-model pre-hook: the merged embeddings are all that is needed."""


@dataclass(frozen=True)
class Arch:
    layers: str  # ModuleList of decoder blocks
    embed: str  # token embedding
    rotary: str | None  # rotary module giving (cos, sin) from (x, position_ids); None: positions inside blocks
    model_types: tuple[str, ...]
    language: str | None = None  # VLMs: the language model, whose `inputs_embeds` are the merged embeddings
    fp_modules: tuple[str, ...] = ()  # VLMs: modules outside the blocks that stay FP (vision tower, projector)


_LLAVA_LM = "model.language_model"
ARCHS: dict[str, Arch] = {
    "llama": Arch("model.layers", "model.embed_tokens", "model.rotary_emb",
                  ("llama", "mistral", "qwen2", "qwen3")),
    # transformers >= 4.52 layout of LlavaForConditionalGeneration & co; the language model's own family
    # (Llama, Qwen2/3) decides the block wiring (algorithms/mappings.py matches block classes)
    "llava": Arch(f"{_LLAVA_LM}.layers", f"{_LLAVA_LM}.embed_tokens", f"{_LLAVA_LM}.rotary_emb",
                  ("llava", "llava_next", "llava_onevision"), language=_LLAVA_LM,
                  fp_modules=("model.vision_tower", "model.multi_modal_projector", "model.image_newline")),
}


def detect_arch(model: nn.Module) -> Arch:
    model_type = getattr(model.config, "model_type", "")
    for arch in ARCHS.values():
        if model_type in arch.model_types:
            return arch
    known = ", ".join(t for a in ARCHS.values() for t in a.model_types)
    raise ConfigError("model", f"layerwise quantization does not know model_type {model_type!r} (known: {known})")


class Layerwise:
    """A model seen as embed -> blocks[0..n) (-> norm/head, never needed to calibrate)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.arch = model, detect_arch(model)
        self.blocks: nn.ModuleList = model.get_submodule(self.arch.layers)
        self.rotary = model.get_submodule(self.arch.rotary) if self.arch.rotary else None

    def block_prefix(self, index: int) -> str:
        return f"{self.arch.layers}.{index}."

    def fp_modules(self) -> list[str]:
        """The VLM modules left FP that this model has (vision tower, projector, ...)."""
        names = {n for n, _ in self.model.named_modules()} | {n for n, _ in self.model.named_parameters()}
        return [m for m in self.arch.fp_modules if m in names]

    @contextmanager
    def stem_on(self, device: torch.device) -> Iterator[None]:
        """What makes the first block's inputs (the token embeddings; a VLM's vision tower and projector) on
        `device` for the body, then back on its own tensors. On the CPU, LLaVA-1.5-7B's ViT-L over 128
        calibration images took about two and a half minutes of the job (benchmarks/RESULTS.md)."""
        with borrowed(named_tensors(self.model, self.stem()), device):
            yield

    def stem(self) -> list[str]:
        return [self.arch.embed, *self.fp_modules()]

    def final_norm(self) -> nn.Module:
        """The norm between the last block and lm_head (`<decoder>.norm` in the Llama family)."""
        name = self.arch.layers.rsplit(".", 1)[0] + ".norm"
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            raise ConfigError("model", f"no final norm at {name!r}: a gradient pass needs it") from None

    @contextmanager
    def weights_on(self, device: torch.device, stream: bool) -> Iterator[Callable[[nn.Module], Any] | None]:
        """The model's weights borrowed onto `device` for a block-by-block pass (backward_by_block): all of them,
        or with `stream` (a model larger than the device) the stem, final norm and lm_head, yielding the `place`
        that borrows each block for its own calls."""
        if not stream:
            with borrowed(module_tensors(self.model), device):
                yield None
            return
        ends = module_tensors(self.final_norm(), self.model.get_output_embeddings())
        with borrowed(named_tensors(self.model, self.stem()) + ends, device):
            yield lambda block: borrowed(module_tensors(block), device)

    @torch.no_grad()
    def embed(self, ids: torch.Tensor, images: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The first block's inputs: token embeddings, or with `images` (a VLM's pixel_values & co for the
        image tokens of `ids`, in order) the merged embeddings the model's forward hands its language model."""
        if not images:
            return self.model.get_submodule(self.arch.embed)(ids)
        if self.arch.language is None:
            raise ConfigError("calib", f"{type(self.model).__name__} takes no images (a text-only model)")
        box: dict[str, torch.Tensor] = {}

        def grab(_module: nn.Module, _args: tuple, kwargs: dict) -> None:
            box["x"] = kwargs["inputs_embeds"]
            raise _Captured

        handle = self.model.get_submodule(self.arch.language).register_forward_pre_hook(grab, with_kwargs=True)
        dtype = self.model.get_submodule(self.arch.embed).weight.dtype
        images = {k: v.to(dtype) if v.is_floating_point() else v for k, v in images.items()}
        try:
            self.model(input_ids=ids, **images, use_cache=False)
        except _Captured:
            pass
        finally:
            handle.remove()
        return box["x"]

    def embed_rows(self, batch: CalibRows) -> torch.Tensor:
        """`embed` of a batch of calibration rows (their ids and any images), on the model's device."""
        device = self.model.get_submodule(self.arch.embed).weight.device
        images = {k: v.to(device) for k, v in batch.image_inputs().items()}
        # a copy: ids that came through Ray's object store are a read-only array (as_tensor would warn on CPU)
        return self.embed(torch.tensor(batch.ids, device=device), images or None)

    def block_kwargs(self, x: torch.Tensor) -> dict[str, Any]:
        """What the model passes a block besides hidden states. Calibration rows are unpadded or right-padded
        (padding never reaches a real token under a causal mask), so no mask: sdpa/eager take the causal path
        (the block tests' convention)."""
        pos = torch.arange(x.shape[1], device=x.device).unsqueeze(0).expand(x.shape[0], -1)
        kwargs: dict[str, Any] = {"position_ids": pos}
        if self.rotary is not None:
            self.rotary.to(x.device)
            kwargs["position_embeddings"] = self.rotary(x, pos)
        return kwargs

    @torch.no_grad()
    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        y = block(x, **self.block_kwargs(x))
        return y[0] if isinstance(y, tuple) else y


def named_tensors(model: nn.Module, names: Iterable[str]) -> list[torch.Tensor]:
    """The parameters and buffers of the named modules (or the named parameters) of `model`."""
    modules = dict(model.named_modules())
    return [t for name in names for t in (
        module_tensors(modules[name]) if name in modules else [model.get_parameter(name)])]


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
