"""The DeepSpeed config, generated from the trainer spec; a raw JSON file or inline overrides win."""

from __future__ import annotations

import json
from typing import Any

from core import storage
from core.errors import ConfigError
from jobs.sft.config import TrainerConfig

GRANULARITIES = ("module", "block")


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def hooks_per_block(z: Any) -> bool:
    """ZeRO-3 with hooks per decoder layer (jobs/sft/zero_hooks.py); other stages fetch nothing per module."""
    return z.stage == 3 and z.granularity == "block"


def _zero_section(t: TrainerConfig) -> dict[str, Any]:
    z = t.zero
    section: dict[str, Any] = {"stage": z.stage, "overlap_comm": z.overlap_comm, "contiguous_gradients": True}
    if z.stage == 3:
        section.update(
            stage3_param_persistence_threshold=z.param_persistence_threshold,
            stage3_gather_16bit_weights_on_model_save=True,
        )
        if hooks_per_block(z):  # its Linear wrapper would bring a Python autograd call per Linear back
            section["memory_efficient_linear"] = False
    if z.offload_params:
        section["offload_param"] = {"device": "cpu", "pin_memory": True}
    if z.offload_optimizer:
        section["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return section


def check_zero(t: TrainerConfig) -> None:
    if t.zero.stage not in (0, 1, 2, 3):
        raise ConfigError("trainer.zero.stage", f"{t.zero.stage} is not a ZeRO stage (0-3)")
    if t.zero.granularity not in GRANULARITIES:
        raise ConfigError("trainer.zero.granularity", f"{t.zero.granularity}: not one of {', '.join(GRANULARITIES)}")


def build_ds_config(t: TrainerConfig, bf16: bool) -> dict[str, Any]:
    check_zero(t)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": t.optim.grad_clip,
        "zero_optimization": _zero_section(t),
        "bf16": {"enabled": bf16},
        # the optimizer is a torch AdamW built over trainable params only (no JIT-built op)
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if t.zero.config_file:
        path = storage.local_path(t.zero.config_file, field="trainer.zero.config_file")
        try:
            config = deep_merge(config, json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ConfigError("trainer.zero.config_file", f"{path}:{err.lineno}: {err.msg}") from None
    return deep_merge(config, dict(t.zero.overrides))
