"""The peer a user would write instead: a plain Ray Train TorchTrainer loop around
deepspeed.initialize on the HF model, same ZeRO-3 settings, fixed 4096-token rows (no packing).
`--liger`: the same loop with Liger-Kernel applied to the model as LLaMA-Factory's `enable_liger_kernel` does
(`apply_liger_kernel_to_qwen3`: rotary, RMSNorm, SwiGLU and the fused linear cross-entropy as Triton kernels), what
a user who wants speed configures today. Its pin is pyproject's `liger` extra; for the GPU machine:
`pip download --no-deps -d .whl_liger liger-kernel==0.8.5` (0.9 MiB; carry it beside .whl).

    python -m benchmarks.peer_sft --gpus 1 --micro-batch 4 --checkpointing 1 --steps 30 [--liger]
Prints one line per step: "peer step N tgs=... mfu=...% max_alloc=...GiB".
"""

from __future__ import annotations

import argparse
import time

PEAK = 989e12


def train(config: dict) -> None:
    import deepspeed
    import ray.train
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    from core.models.tiny import QWEN3_1P7B

    device = ray.train.torch.get_device()
    hf_config: Qwen3Config = QWEN3_1P7B.make_config({})
    hf_config._attn_implementation = "sdpa"
    ds_config = {"train_micro_batch_size_per_gpu": config["mbs"], "gradient_accumulation_steps": 1,
                 "gradient_clipping": 1.0, "bf16": {"enabled": True}, "zero_allow_untested_optimizer": True,
                 "zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True},
                 "steps_per_print": 10**9}
    if config["liger"]:  # patches transformers' Qwen3 classes: before the model is built
        from liger_kernel.transformers import apply_liger_kernel_to_qwen3

        apply_liger_kernel_to_qwen3(rope=True, rms_norm=True, swiglu=True, fused_linear_cross_entropy=True)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
    if config["liger"]:
        # the fused loss reads lm_head.weight without calling lm_head: ZeRO-3 gathers it with the model's forward
        deepspeed.zero.register_external_parameter(model, model.lm_head.weight)
    if config["ckpt"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    params = sum(p.ds_numel for p in model.parameters())
    embed = model.get_input_embeddings().weight.ds_numel
    flops = 6 * (params - embed) + 12 * hf_config.num_hidden_layers * hf_config.hidden_size * 4096
    world = ray.train.get_context().get_world_size()
    gen = torch.Generator().manual_seed(ray.train.get_context().get_world_rank())
    for step in range(1, config["steps"] + 1):
        ids = torch.randint(0, 260, (config["mbs"], 4096), generator=gen).to(device)
        began = time.perf_counter()
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        torch.cuda.synchronize()
        tgs = config["mbs"] * 4096 / (time.perf_counter() - began)
        if ray.train.get_context().get_world_rank() == 0:
            mem = torch.cuda.max_memory_allocated() / 2**30
            print(f"peer step {step}/{config['steps']} tgs={tgs:.0f} mfu={100 * tgs * flops / PEAK:.1f}% "
                  f"max_alloc={mem:.2f}GiB world={world}", flush=True)


def main() -> None:
    import os

    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--checkpointing", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--liger", action="store_true", help="Liger-Kernel's Qwen3 kernels (LLaMA-Factory's setting)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    ray.init(include_dashboard=False)
    TorchTrainer(train, train_loop_config={"mbs": args.micro_batch, "ckpt": bool(args.checkpointing),
                                           "steps": args.steps, "liger": args.liger},
                 scaling_config=ScalingConfig(num_workers=args.gpus, use_gpu=True)).fit()


if __name__ == "__main__":
    main()
