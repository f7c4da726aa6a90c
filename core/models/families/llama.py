"""Llama and the families wired like it: Mistral, Qwen2, Qwen3 (and Qwen3-VL's text blocks)."""

from core.models.families.base import Family, Mapping

ATTN_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
MLP_GATE_UP = ("mlp.gate_proj", "mlp.up_proj")
LLAMA_MAPPINGS = (
    Mapping("input_layernorm", ATTN_QKV),
    # attention output is a token mix of v rows: scaling v's output channels scales o's inputs
    Mapping("self_attn.v_proj", ("self_attn.o_proj",)),
    Mapping("post_attention_layernorm", MLP_GATE_UP),
    # down's input is act(gate) * up, linear in up's output
    Mapping("mlp.up_proj", ("mlp.down_proj",)),
)
_PREFIXES = ("Llama", "Mistral", "Qwen2", "Qwen3")

LLAMA = Family(
    "llama", ("llama", "mistral", "qwen2", "qwen3"), "model.layers",
    block_classes=(*(f"{p}DecoderLayer" for p in _PREFIXES), "Qwen3VLTextDecoderLayer"),
    mappings=LLAMA_MAPPINGS, serving_fused=(ATTN_QKV, MLP_GATE_UP),
    fused_ops={f"{p}{kind}": op for p in _PREFIXES
               for kind, op in (("RMSNorm", "rms_norm"), ("MLP", "gated_mlp"), ("Attention", "rotary"))},
)
