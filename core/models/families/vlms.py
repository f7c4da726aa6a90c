"""Vision-language families: the language model's blocks are calibrated from the merged image+text embeddings,
the vision tower and projector stay FP. Their blocks' wiring is the language model's family (by block class)."""

from core.models.families.base import Family, GroupLayout

_LM = "model.language_model"
LLAVA_GROUPS = GroupLayout(vision=("model.vision_tower",), projector=("model.multi_modal_projector",),
                           language=(_LM,))
# LLaVA-NeXT / OneVision: the learned row separator of the anyres feature grid belongs to the projector side
LLAVA_NEXT_GROUPS = GroupLayout(vision=LLAVA_GROUPS.vision, projector=(*LLAVA_GROUPS.projector, "model.image_newline"),
                                language=(_LM,))
# Qwen-VL: the patch merger (and Qwen3-VL's deepstack mergers) is the projector, inside model.visual
QWEN_VL_GROUPS = GroupLayout(vision=("model.visual",),
                             projector=("model.visual.merger", "model.visual.deepstack_merger_list"),
                             language=(_LM,))

LLAVA = Family("llava", ("llava",), f"{_LM}.layers", groups=LLAVA_GROUPS)
LLAVA_NEXT = Family("llava_next", ("llava_next", "llava_onevision"), f"{_LM}.layers", groups=LLAVA_NEXT_GROUPS)
QWEN_VL = Family("qwen_vl", ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"), f"{_LM}.layers",
                 groups=QWEN_VL_GROUPS)
INTERNVL = Family("internvl", ("internvl",), f"{_LM}.layers", groups=LLAVA_GROUPS)
MISTRAL3 = Family("mistral3", ("mistral3",), f"{_LM}.layers", groups=LLAVA_GROUPS)
