"""What a model family is: everything family-specific, in one small object per family.

A family names the decoder-block ModuleList (the generic block path finds it without help, a family
only makes the lookup exact), the module groups that inspect and `model.freeze` use, the wiring that
AWQ / SmoothQuant / MBQ fold scales along (which op produces each shared input of which Linears), the
Linears a serving engine fuses into one GEMM (they must share a format), and the fused-op kind of its
module classes (kernels/fused). GPTQ and RTN need none of it (core/blocks/layerwise.py).

A vision-language family names no block classes: its language model's blocks are another family's
(LLaVA on Qwen3, InternVL on Qwen2, ...), found by block class (`wiring_of`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Mapping:
    """`prev`'s output is the shared input of `linears`: a scale s folds into prev (output / s) and into the
    linears' weight columns (* s). `prev_rows="tail"`: prev is a fused Linear whose last rows produce the
    input (Phi-3: v inside qkv_proj, up inside gate_up_proj). `passive`: modules that read the same input and get
    the same column scaling but are not quantized (a mixture-of-experts router: its choices must not change).
    "{e}" in a name stands for each expert of the block (core/blocks/mappings.py expands it); a mapping whose
    modules a block lacks (DeepSeek-V3's dense first blocks) does not apply to that block."""

    prev: str
    linears: tuple[str, ...]
    prev_rows: str = "all"
    passive: tuple[str, ...] = ()


@dataclass(frozen=True)
class GroupLayout:
    """Module paths of a model's groups (inspect, model.freeze); embeddings and lm_head are found by
    transformers' get_input_embeddings / get_output_embeddings for every family."""

    vision: tuple[str, ...] = ()
    projector: tuple[str, ...] = ()
    language: tuple[str, ...] = ()

    def paths(self) -> list[tuple[str, str]]:
        """(module path, group), longest path first."""
        pairs = [(p, g) for g in ("vision", "projector", "language") for p in getattr(self, g)]
        return sorted(pairs, key=lambda pair: -len(pair[0]))


CAUSAL_LM = GroupLayout(language=("",))  # "" is the root: every parameter not otherwise claimed


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.model_type values of the whole model
    blocks: str  # the decoder-block ModuleList
    block_classes: tuple[str, ...] = ()  # decoder-layer classes whose wiring `mappings` describes
    mappings: tuple[Mapping, ...] = ()  # AWQ / SmoothQuant / MBQ; empty: those algorithms refuse the family
    # Linears (in a block) an engine runs as one GEMM, so one format each; "{e}": every expert of the block
    serving_fused: tuple[tuple[str, ...], ...] = ()
    groups: GroupLayout = CAUSAL_LM
    norm_offset: float = 0.0  # the block norms scale by (offset + weight) (Gemma: 1)
    fused_ops: dict[str, str] = field(default_factory=dict)  # module class -> kernels/fused op kind
    # names in memory -> names on disk where they differ ("{e}" an expert's index): Mixtral's block_sparse_moe
    disk_names: tuple[tuple[str, str], ...] = ()
    serving_fp: tuple[str, ...] = ()  # modules serving engines keep FP (MoE routers), as compressed-tensors ignores
    attention: str | None = None  # the attention implementation to use where transformers refuses sdpa (gpt-oss)

    def to_disk(self, name: str) -> str:
        return _rename(name, self.disk_names, reverse=False)

    def from_disk(self, name: str) -> str:
        return _rename(name, self.disk_names, reverse=True)


def _rename(name: str, pairs: tuple[tuple[str, str], ...], reverse: bool) -> str:
    for memory, disk in pairs:
        source, target = (disk, memory) if reverse else (memory, disk)
        pattern = re.escape(source).replace(re.escape("{e}"), r"(?P<e>\d+)")
        name = re.sub(pattern, lambda m, t=target: t.replace("{e}", m.groupdict().get("e") or ""), name)
    return name
