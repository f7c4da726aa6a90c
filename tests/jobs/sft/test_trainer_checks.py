"""trainer.* tri-state settings are checked before Ray starts, each error naming its field."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from jobs.sft.config import TrainerConfig
from jobs.sft.driver import _check_trainer


@pytest.mark.parametrize(("name", "allowed"), [("use_gpu", "auto, true, false"), ("bf16", "auto, true, false"),
                                               ("fused_ops", "auto, true, false, liger")])
def test_choice_fields_accept_their_values_only(name: str, allowed: str) -> None:
    for value in ("auto", "true", "false", True, False):
        _check_trainer(TrainerConfig(**{name: value}))
    with pytest.raises(ConfigError, match=rf"trainer\.{name}.*must be one of {allowed}$") as err:
        _check_trainer(TrainerConfig(**{name: "sometimes"}))
    assert err.value.field == f"trainer.{name}"


def test_liger_fused_ops_need_cuda_workers() -> None:
    _check_trainer(TrainerConfig(fused_ops="liger"))  # use_gpu auto: decided by the workers
    with pytest.raises(ConfigError, match=r"trainer\.fused_ops.*CUDA workers only \(trainer\.use_gpu=false\)"):
        _check_trainer(TrainerConfig(fused_ops="liger", use_gpu="false"))
    import torch

    from jobs.sft.worker import WorkerEnv, _fuse_ops

    with pytest.raises(ConfigError, match=r"trainer\.fused_ops.*this worker has a CPU") as err:
        _fuse_ops(torch.nn.Linear(2, 2), "liger", WorkerEnv(rank=0, world=1, device=torch.device("cpu")))
    assert err.value.field == "trainer.fused_ops"


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


def test_zero_granularity_and_stage_are_checked_and_block_drops_deepspeeds_linear_wrapper() -> None:
    from jobs.sft.config import ZeroConfig
    from jobs.sft.deepspeed_config import build_ds_config

    for field, zero in (("granularity", ZeroConfig(granularity="layer")), ("stage", ZeroConfig(stage=4))):
        with pytest.raises(ConfigError, match=rf"trainer\.zero\.{field}") as err:
            _check_trainer(TrainerConfig(zero=zero))
        assert err.value.field == f"trainer.zero.{field}"
    _check_trainer(TrainerConfig(zero=ZeroConfig(stage=2)))  # the default granularity with a stage that has no hooks
    section = build_ds_config(TrainerConfig(), bf16=False)["zero_optimization"]  # block: the default
    assert section["memory_efficient_linear"] is False
    module = build_ds_config(TrainerConfig(zero=ZeroConfig(granularity="module")), bf16=False)["zero_optimization"]
    assert "memory_efficient_linear" not in module


def test_checkpoints_every_n_steps_contradict_save_false() -> None:
    from jobs.sft.config import CheckpointConfig

    _check_trainer(TrainerConfig(checkpoint=CheckpointConfig(save=False)))
    with pytest.raises(ConfigError, match=r"trainer\.checkpoint\.every_n_steps.*save=false") as err:
        _check_trainer(TrainerConfig(checkpoint=CheckpointConfig(save=False, every_n_steps=5)))
    assert err.value.field == "trainer.checkpoint.every_n_steps"


def test_compile_modes_are_checked_and_blocks_under_zero3_needs_hooks_per_block() -> None:
    from jobs.sft.config import ZeroConfig

    _check_trainer(TrainerConfig(compile="blocks", zero=ZeroConfig(granularity="block")))
    _check_trainer(TrainerConfig(compile="blocks", zero=ZeroConfig(stage=2)))
    for config, message in ((TrainerConfig(compile="model"), "model: not one of off, blocks"),
                            (TrainerConfig(compile="blocks", zero=ZeroConfig(granularity="module")),
                             "needs trainer.zero.granularity=block")):
        with pytest.raises(ConfigError, match=message) as err:
            _check_trainer(config)
        assert err.value.field == "trainer.compile"
