"""Gemma 3 text: norms before and after attention and MLP (the MLP reads pre_feedforward_layernorm), norms that
scale by (1 + weight), embeddings scaled by sqrt(hidden) inside the embedding module."""

from core.models.families.base import Family, Mapping
from core.models.families.llama import ATTN_QKV, MLP_GATE_UP

GEMMA3_TEXT = Family(
    "gemma3_text", ("gemma3_text",), "model.layers", block_classes=("Gemma3DecoderLayer",),
    mappings=(
        Mapping("input_layernorm", ATTN_QKV),
        Mapping("self_attn.v_proj", ("self_attn.o_proj",)),
        Mapping("pre_feedforward_layernorm", MLP_GATE_UP),
        Mapping("mlp.up_proj", ("mlp.down_proj",)),
    ),
    serving_fused=(ATTN_QKV, MLP_GATE_UP), norm_offset=1.0,
)
