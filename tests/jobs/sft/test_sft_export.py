"""The SFT export's metadata and layout, through the SFT worker's own code (its DeepSpeed ZeRO-3 engine on one gloo
rank in this process, then `export_trained`): a bf16 input model comes out bf16 (trained in float32), with
`use_cache` on, eos / pad from the tokenizer in config.json and generation_config.json, sharded above the threshold
and loadable by transformers and by model=hf (evaluate, quantize); the demo model's export stops generating at
the end of an assistant turn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from core.models.byte_tokenizer import EOS_ID, PAD_ID, VOCAB_SIZE, byte_tokenizer
from core.models.export import INDEX, WEIGHTS, load_weights
from core.tracking import RunHandle

pytestmark = pytest.mark.e2e  # DeepSpeed engines (tests/conftest.py: the end-to-end lane)

FAST = ["data.max_length=256", "data.pack_max_length=256", "trainer.num_workers=1",
        "trainer.zero.param_persistence_threshold=0"]


@pytest.fixture(scope="module", autouse=True)
def _one_process_group(one_gloo_rank):
    """One gloo rank for the DeepSpeed engines (tests/jobs/conftest.py)."""


def _train_and_export(overrides: list[str], storage: Path, exports: dict[str, dict]) -> list[float]:
    """The SFT worker's build, engine and steps (float32, as on a CPU worker), then its export once per entry of
    `exports` (name -> write_export options). The losses."""
    from core.data.sft import build_sft_data
    from core.models import MODELS
    from jobs.sft.batches import BatchPlan
    from jobs.sft.deepspeed_config import build_ds_config
    from jobs.sft.worker import WorkerEnv, build_engine, build_for_training, export_trained, train_step
    from orchestrator.compose import compose, to_spec

    spec = to_spec(compose(["job=sft", *FAST, *overrides, "tracking.enabled=false", f"job.storage={storage}"]))
    source = MODELS.get(spec.model.name)
    rows = build_sft_data(spec.data, source.tokenizer(spec.model), None).rows
    ds_config = build_ds_config(spec.trainer, bf16=False)
    model, _, tokenizer = build_for_training(spec, ds_config, torch.float32)
    engine, _ = build_engine(spec, model, ds_config, torch.device("cpu"))
    env = WorkerEnv(0, 1, torch.device("cpu"))
    plan = BatchPlan(rows, spec.trainer.micro_batch_size, spec.trainer.grad_accum, 1, 0, spec.data.seed,
                     pad_id=tokenizer.pad_token_id)
    losses = [train_step(engine, plan.step(step), env)[0] for step in range(1, spec.trainer.max_steps + 1)]
    for name, options in exports.items():
        assert export_trained(spec, engine, tokenizer, str(storage / name), RunHandle("", ""), 0, **options)
    engine.destroy()
    return losses


def _bf16_model_dir(root: Path) -> Path:
    """A tiny bf16 Qwen3 directory whose config disagrees with its tokenizer (pad 0, no eos), as downloads do."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("qwen3", vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(root)
    byte_tokenizer().save_pretrained(root)
    assert json.loads((root / "config.json").read_text())["dtype"] == "bfloat16"
    return root


def _logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([[EOS_ID, 10, 20, 30, 40]])).logits


def test_a_bf16_model_exports_bf16_with_serving_metadata_in_one_file_or_shards(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, GenerationConfig

    from core.models import MODELS
    from core.models.config import ModelConfig

    source = _bf16_model_dir(tmp_path / "bf16")
    _train_and_export(["model=hf", f"model.path={source}", "trainer.max_steps=1"], tmp_path,
                      {"one": {}, "sharded": {"max_shard_size": "100KB"}})
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    assert (one / WEIGHTS).exists() and not (one / INDEX).exists()
    assert (sharded / INDEX).exists() and not (sharded / WEIGHTS).exists()
    for export in (one, sharded):
        config = json.loads((export / "config.json").read_text())
        assert config["dtype"] == "bfloat16" and config["use_cache"] is True
        assert (config["eos_token_id"], config["pad_token_id"]) == (EOS_ID, PAD_ID)  # the tokenizer's
        generation = GenerationConfig.from_pretrained(export)
        assert (generation.eos_token_id, generation.pad_token_id) == (EOS_ID, PAD_ID)
        assert {t.dtype for t in load_weights(export).values()} == {torch.bfloat16}
    weights = load_weights(one)
    assert all(torch.equal(weights[k], v) for k, v in load_weights(sharded).items()) and len(weights) > 10
    reference = _logits(AutoModelForCausalLM.from_pretrained(one).eval())
    loaded = AutoModelForCausalLM.from_pretrained(sharded).eval()
    assert loaded.dtype == torch.bfloat16 and torch.equal(_logits(loaded), reference)
    # model=hf, as evaluate and quantize read an SFT export: its checks, then its build
    hf, cfg = MODELS.get("hf"), ModelConfig(name="hf", path=str(sharded))
    hf.validate(cfg)
    assert torch.equal(_logits(hf.build(cfg, hf.hf_config(cfg), torch.bfloat16).eval()), reference)


def test_the_demo_models_export_stops_at_the_end_of_a_turn(tmp_path: Path) -> None:
    """The demo model (qwen3_tiny, byte tokenizer) trained by the SFT worker on chats whose every reply is "ok."
    followed, as the chat template ends each turn, by `<|im_end|>`: ten steps teach it to end its reply (the job's
    8-step demo run does not yet emit the token; the 20-step `make run` one does). Greedy generation from the
    reloaded export stops right after `<|im_end|>` with nothing but the export's own generation config; without its
    eos the same model runs on to max_new_tokens, so the stop is the metadata's doing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tmp_path / "ok.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say ok to {i}."},
                                                     {"role": "assistant", "content": "ok."}]}) + "\n"
                            for i in range(64)))
    losses = _train_and_export([f"data.datasets=[{{path: {data}}}]", "trainer.micro_batch_size=4",
                                "trainer.optim.lr=3e-3", "trainer.optim.warmup_steps=2", "trainer.max_steps=10"],
                               tmp_path, {"export": {}})
    assert losses[-1] < 0.1, losses
    export = tmp_path / "export"
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    assert model.generation_config.eos_token_id == EOS_ID == tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Say ok to 1000."}], return_tensors="pt",
                                           add_generation_prompt=True, return_dict=True)
    start, limit = prompt["input_ids"].shape[1], 32
    reply = model.generate(**prompt, max_new_tokens=limit, do_sample=False)[0, start:]
    assert reply[-1] == EOS_ID and EOS_ID not in reply[:-1] and len(reply) < limit, reply
    assert tokenizer.decode(reply) == "ok.<|im_end|>"
    model.generation_config.eos_token_id = None
    assert len(model.generate(**prompt, max_new_tokens=limit, do_sample=False)[0, start:]) == limit
