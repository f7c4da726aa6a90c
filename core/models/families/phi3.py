"""Phi-3 / Phi-3.5: q, k, v fused in one qkv_proj and gate, up in one gate_up_proj."""

from core.models.families.base import Family, Mapping

PHI3 = Family(
    "phi3", ("phi3",), "model.layers", block_classes=("Phi3DecoderLayer",),
    mappings=(
        Mapping("input_layernorm", ("self_attn.qkv_proj",)),
        Mapping("self_attn.qkv_proj", ("self_attn.o_proj",), prev_rows="tail"),  # v: the last rows
        Mapping("post_attention_layernorm", ("mlp.gate_up_proj",)),
        Mapping("mlp.gate_up_proj", ("mlp.down_proj",), prev_rows="tail"),  # up: the last rows
    ),
)
