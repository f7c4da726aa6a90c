"""Mixture-of-experts decoders: Qwen3-MoE, Mixtral, DeepSeek-V3 (MLA attention), gpt-oss (attention sinks,
sliding-window layers, biased interleaved experts).

Their experts are split into one Linear per projection for calibration and export (core/models/moe.py); the
routers stay FP, as vLLM serves them (compressed-tensors `ignore`). Mappings (AWQ, SmoothQuant): the norm before
the experts feeds every expert's gate and up (and the shared experts') and the router, which is scaled with them
but never quantized (its choices stay the same); each expert's up feeds its own down (not gpt-oss's: its gate
function is not linear in up).

Serving: vLLM runs a block's experts as one fused MoE layer whose gate, up and down projections of every expert take
one quantization scheme, so all of them are one serving-fused set; DeepSeek's MLA runs q_a_proj and
kv_a_proj_with_mqa as one GEMM (`fused_qkv_a_proj`), its dense and shared-expert MLPs gate and up as one."""

from core.models.families.base import Family, Mapping
from core.models.families.llama import ATTN_QKV, MLP_GATE_UP

ATTENTION = (Mapping("input_layernorm", ATTN_QKV), Mapping("self_attn.v_proj", ("self_attn.o_proj",)))
EXPERTS_IN = ("mlp.experts.{e}.gate_proj", "mlp.experts.{e}.up_proj")
EXPERT_DOWN = Mapping("mlp.experts.{e}.up_proj", ("mlp.experts.{e}.down_proj",))
EXPERTS = (*EXPERTS_IN, "mlp.experts.{e}.down_proj")  # every expert of the block: one set
MOE_MAPPINGS = (*ATTENTION, Mapping("post_attention_layernorm", EXPERTS_IN, passive=("mlp.gate",)), EXPERT_DOWN)

ROUTER = "re:.*mlp\\.gate$"

QWEN3_MOE = Family(
    "qwen3_moe", ("qwen3_moe",), "model.layers", block_classes=("Qwen3MoeDecoderLayer",), mappings=MOE_MAPPINGS,
    serving_fused=(ATTN_QKV, MLP_GATE_UP, EXPERTS), serving_fp=(ROUTER,),  # gate/up: its dense blocks, if any
)

MIXTRAL = Family(
    "mixtral", ("mixtral",), "model.layers", block_classes=("MixtralDecoderLayer",), mappings=MOE_MAPPINGS,
    serving_fused=(ATTN_QKV, EXPERTS), serving_fp=("re:.*block_sparse_moe\\.gate$",),
    disk_names=(("mlp.experts.{e}.gate_proj.", "block_sparse_moe.experts.{e}.w1."),
                ("mlp.experts.{e}.up_proj.", "block_sparse_moe.experts.{e}.w3."),
                ("mlp.experts.{e}.down_proj.", "block_sparse_moe.experts.{e}.w2."),
                (".mlp.gate.", ".block_sparse_moe.gate.")),
)

DEEPSEEK_V3 = Family(
    "deepseek_v3", ("deepseek_v3",), "model.layers", block_classes=("DeepseekV3DecoderLayer",),
    mappings=(  # multi-head latent attention; MoE blocks after the first dense ones
        Mapping("input_layernorm", ("self_attn.q_a_proj", "self_attn.kv_a_proj_with_mqa")),
        Mapping("self_attn.q_a_layernorm", ("self_attn.q_b_proj",)),
        Mapping("self_attn.kv_a_layernorm", ("self_attn.kv_b_proj",)),
        Mapping("post_attention_layernorm", (*EXPERTS_IN, "mlp.shared_experts.gate_proj", "mlp.shared_experts.up_proj"),
                passive=("mlp.gate",)),
        EXPERT_DOWN,
        Mapping("mlp.shared_experts.up_proj", ("mlp.shared_experts.down_proj",)),
        Mapping("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),  # the dense blocks
        Mapping("mlp.up_proj", ("mlp.down_proj",)),
    ),
    serving_fused=(("self_attn.q_a_proj", "self_attn.kv_a_proj_with_mqa"), MLP_GATE_UP,
                   ("mlp.shared_experts.gate_proj", "mlp.shared_experts.up_proj"), EXPERTS),
    serving_fp=(ROUTER,),
)

GPT_OSS = Family(
    "gpt_oss", ("gpt_oss",), "model.layers", block_classes=("GptOssDecoderLayer",),
    mappings=(*ATTENTION, Mapping("post_attention_layernorm", EXPERTS_IN, passive=("mlp.router",))),
    serving_fused=(ATTN_QKV, EXPERTS), serving_fp=("re:.*mlp\\.router$",),
    attention="eager",  # transformers refuses sdpa for it (attention sinks); sliding and full layers both run
)
