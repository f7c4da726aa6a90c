"""trainer.* tri-state settings are checked before Ray starts, each error naming its field."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from jobs.sft.config import TrainerConfig
from jobs.sft.driver import _check_trainer


@pytest.mark.parametrize("name", ["use_gpu", "bf16", "fused_ops"])
def test_tri_state_fields_accept_auto_true_false_only(name: str) -> None:
    for value in ("auto", "true", "false", True, False):
        _check_trainer(TrainerConfig(**{name: value}))
    with pytest.raises(ConfigError, match=rf"trainer\.{name}.*must be one of auto, true, false") as err:
        _check_trainer(TrainerConfig(**{name: "sometimes"}))
    assert err.value.field == f"trainer.{name}"


@pytest.mark.parametrize(("setting", "fused"), [("auto", False), ("false", False), ("true", True)])
def test_fused_ops_setting_on_a_cpu_worker(setting: str, fused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto leaves a CPU worker's model alone (inductor's C++ compile costs more than it saves there)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.qwen3 import modeling_qwen3

    # fusing swaps the modeling file's rotary function for the process: restored after the test
    monkeypatch.setattr(modeling_qwen3, "apply_rotary_pos_emb", modeling_qwen3.apply_rotary_pos_emb)
    from jobs.sft.worker import WorkerEnv, _fuse_ops

    config = AutoConfig.for_model("qwen3", vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    model = AutoModelForCausalLM.from_config(config)
    _fuse_ops(model, setting, WorkerEnv(rank=1, world=1, device=torch.device("cpu")))
    assert ("forward" in vars(model.model.norm)) is fused
