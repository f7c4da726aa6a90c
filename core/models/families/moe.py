"""Mixture-of-experts decoders: Qwen3-MoE, Mixtral, DeepSeek-V3 (MLA attention), gpt-oss (attention sinks,
sliding-window layers, biased interleaved experts).

Their experts are split into one Linear per projection for calibration and export (core/models/moe.py); the
routers stay FP, as vLLM serves them (compressed-tensors `ignore`). No AWQ/SmoothQuant mappings yet: the norm
before the experts feeds every expert, and the scale search over them is not written (those algorithms refuse
these families with one error line; RTN and GPTQ run)."""

from core.models.families.base import Family
from core.models.families.llama import ATTN_QKV

ROUTER = "re:.*mlp\\.gate$"

QWEN3_MOE = Family(
    "qwen3_moe", ("qwen3_moe",), "model.layers", block_classes=("Qwen3MoeDecoderLayer",),
    serving_fused=(ATTN_QKV,), serving_fp=(ROUTER,),
)

MIXTRAL = Family(
    "mixtral", ("mixtral",), "model.layers", block_classes=("MixtralDecoderLayer",),
    serving_fused=(ATTN_QKV,), serving_fp=("re:.*block_sparse_moe\\.gate$",),
    disk_names=(("mlp.experts.{e}.gate_proj.", "block_sparse_moe.experts.{e}.w1."),
                ("mlp.experts.{e}.up_proj.", "block_sparse_moe.experts.{e}.w3."),
                ("mlp.experts.{e}.down_proj.", "block_sparse_moe.experts.{e}.w2."),
                (".mlp.gate.", ".block_sparse_moe.gate.")),
)

DEEPSEEK_V3 = Family(
    "deepseek_v3", ("deepseek_v3",), "model.layers", block_classes=("DeepseekV3DecoderLayer",),
    serving_fp=(ROUTER,),
)

GPT_OSS = Family(
    "gpt_oss", ("gpt_oss",), "model.layers", block_classes=("GptOssDecoderLayer",),
    serving_fused=(ATTN_QKV,), serving_fp=("re:.*mlp\\.router$",),
    attention="eager",  # transformers refuses sdpa for it (attention sinks); sliding and full layers both run
)
