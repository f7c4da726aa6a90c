"""`trainer.compile=blocks`: each decoder layer's forward compiled by torch.compile, as torchtitan compiles per block.

One compiled graph per layer (forward and, through AOTAutograd, backward) launches its kernels without the Python of
transformers' layer between them and fuses the elementwise work around the matmuls. Hooks stay outside the compiled
region: DeepSpeed's ZeRO-3 hooks (on the layer itself with `trainer.zero.granularity=block`, which compiling needs:
per-submodule hooks inside the layer would break the graph at every module) and activation checkpointing's wrapper.
The layers share one code object, so they share the compiled graphs (transformers' modules are inlined, not guarded
by identity).
"""

from __future__ import annotations

from typing import Any

from jobs.sft.zero_hooks import block_classes, decoder

COMPILE_MODES = ("off", "blocks")


def compile_blocks(model: Any, backend: str = "inductor") -> int:
    """Replace the forward of every block of the language model (jobs/sft/zero_hooks.py block_classes) by its
    compiled version; how many. `backend`: torch.compile's (tests: aot_eager, the same capture without codegen)."""
    import torch  # here: the driver imports this module for COMPILE_MODES

    classes = tuple(block_classes(model))
    blocks = [m for m in decoder(model).modules() if classes and isinstance(m, classes)]
    for block in blocks:
        block.forward = torch.compile(block.forward, backend=backend)
    return len(blocks)
