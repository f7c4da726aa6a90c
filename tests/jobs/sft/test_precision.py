"""trainer.precision=fp8 (torchao float8 training of the decoder blocks' Linears): its settings are checked before
anything starts, a cluster without GPUs fails the run with one error line, the Linears it converts are the blocks'
(lm_head, embeddings and a vision tower stay bf16), and on a CUDA GPU of compute capability >= 8.9 a float8 model's
loss and gradients follow the bf16 model's."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from core.errors import ConfigError
from jobs.sft.config import TrainerConfig
from jobs.sft.driver import _check_trainer
from jobs.sft.precision import apply_precision, check_precision_on, fp8_linears
from tests.conftest import mlflow_run, run_cli, run_id_of


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"precision": "fp4"}, "trainer.precision", "must be one of default, fp8, got 'fp4'"),
    ({"fp8_scaling": "blockwise"}, "trainer.fp8_scaling", "must be one of rowwise, tensorwise"),
    ({"precision": "fp8", "use_gpu": "false"}, "trainer.precision", "CUDA workers only (trainer.use_gpu=false)"),
    ({"precision": "fp8", "bf16": "false"}, "trainer.precision", "needs trainer.bf16 auto or true"),
])
def test_bad_precision_settings_name_their_field(fields: dict, field: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _check_trainer(TrainerConfig(**fields))
    assert err.value.field == field and message in str(err.value)


def test_fp8_settings_that_pass_before_the_cluster_is_known() -> None:
    for scaling in ("rowwise", "tensorwise"):
        _check_trainer(TrainerConfig(precision="fp8", fp8_scaling=scaling))  # use_gpu, bf16: auto
    check_precision_on(TrainerConfig(precision="fp8"), use_gpu=True)
    check_precision_on(TrainerConfig(), use_gpu=False)  # default precision: CPU workers are fine
    with pytest.raises(ConfigError, match="this cluster has no GPU"):
        check_precision_on(TrainerConfig(precision="fp8"), use_gpu=False)


def test_a_cpu_worker_refuses_fp8() -> None:
    with pytest.raises(ConfigError, match="compute capability 8.9 or more, this worker has a CPU"):
        apply_precision(torch.nn.Linear(16, 16), TrainerConfig(precision="fp8"), torch.device("cpu"))
    assert apply_precision(torch.nn.Linear(16, 16), TrainerConfig(), torch.device("cpu")) == 0


def _qwen3(hidden: int = 64, intermediate: int = 128):
    config = AutoConfig.for_model("qwen3", vocab_size=256, hidden_size=hidden, intermediate_size=intermediate,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    return AutoModelForCausalLM.from_config(config)


def test_the_blocks_linears_are_chosen_not_the_head_or_a_vision_tower() -> None:
    model = _qwen3()
    chosen = fp8_linears(model, "model.layers")
    per_block = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert chosen == [f"model.layers.{i}.{name}" for i in range(2) for name in per_block]
    odd = _qwen3(hidden=64, intermediate=72)  # gate/up outputs and down inputs of 72: not float8 GEMM shapes
    assert not any(n.endswith(("gate_proj", "up_proj", "down_proj")) for n in fp8_linears(odd, "model.layers"))
    from core.models import MODELS, ModelConfig

    source, cfg = MODELS.get("llava_tiny"), ModelConfig(name="llava_tiny")
    vlm = source.build(cfg, source.hf_config(cfg), torch.float32)
    chosen = fp8_linears(vlm, "model.language_model.layers")
    assert chosen and all(n.startswith("model.language_model.layers.") for n in chosen)
    assert any("vision_tower" in n for n, m in vlm.named_modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("scaling", ["rowwise", "tensorwise"])
def test_torchao_swaps_exactly_the_chosen_linears(scaling: str) -> None:
    from jobs.sft.precision import to_float8

    model = _qwen3()
    chosen = to_float8(model, scaling)
    swapped = [n for n, m in model.named_modules() if type(m).__name__ == "Float8Linear"]
    assert swapped == chosen == fp8_linears(_qwen3(), "model.layers") and len(chosen) == 14
    assert type(model.lm_head) is torch.nn.Linear  # the head (and the embeddings) stay bf16


def test_fp8_on_a_cpu_cluster_fails_the_run_with_one_line(tmp_path, ray_head) -> None:
    storage = tmp_path / "runs"
    result = run_cli(["job=sft", "trainer.precision=fp8", "trainer.max_steps=1", "cluster.include_dashboard=false",
                      *ray_head.args], storage, env=ray_head.env)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "trainer.precision" in errors[0] and "no GPU" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    run = mlflow_run(storage, run_id_of(result.stdout))
    assert run.info.status == "FAILED" and "trainer.precision" in run.data.tags["error"]


def _fp8_gpu() -> bool:
    return (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
            and importlib.util.find_spec("torchao") is not None)


@pytest.mark.skipif(not _fp8_gpu(), reason="float8 matmuls: a CUDA GPU of compute capability >= 8.9 and torchao")
@pytest.mark.parametrize("scaling", ["rowwise", "tensorwise"])
def test_fp8_loss_and_gradients_follow_bf16(scaling: str) -> None:
    torch.manual_seed(0)
    reference = _qwen3(hidden=256, intermediate=512).to("cuda", torch.bfloat16)
    fp8 = _qwen3(hidden=256, intermediate=512).to("cuda", torch.bfloat16)
    fp8.load_state_dict(reference.state_dict())
    assert apply_precision(fp8, TrainerConfig(precision="fp8", fp8_scaling=scaling), torch.device("cuda")) == 14
    ids = torch.randint(0, 256, (4, 256), device="cuda")
    losses, grads = [], []
    for model in (reference, fp8):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.float().flatten() for p in model.model.layers.parameters()]))
    # float8 e4m3 keeps 3 mantissa bits: a loss within 2% of bf16's, gradients pointing the same way
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.98


@pytest.mark.skipif(not _fp8_gpu(), reason="float8 matmuls: a CUDA GPU of compute capability >= 8.9 and torchao")
def test_compiled_float8_forward_matches_torchaos_eager_one() -> None:
    from jobs.sft.precision import compile_float8, to_float8

    torch.manual_seed(0)
    eager = _qwen3(hidden=256, intermediate=512).to("cuda", torch.bfloat16)
    to_float8(eager, "rowwise")
    compiled = _qwen3(hidden=256, intermediate=512).to("cuda", torch.bfloat16)
    to_float8(compiled, "rowwise")
    compiled.load_state_dict(eager.state_dict())
    assert compile_float8(compiled) == 14
    ids = torch.randint(0, 256, (2, 128), device="cuda")
    outs = []
    for model in (eager, compiled):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        outs.append((loss.item(), model.model.layers[0].mlp.down_proj.weight.grad.float()))
    # the same float8 math; the compiled scales may round their reciprocal differently
    assert outs[1][0] == pytest.approx(outs[0][0], rel=1e-3)
    assert torch.nn.functional.cosine_similarity(outs[0][1].flatten(), outs[1][1].flatten(), dim=0) > 0.999
