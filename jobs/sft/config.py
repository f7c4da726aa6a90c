from dataclasses import dataclass, field
from typing import Any


@dataclass
class ZeroConfig:
    stage: int = 3
    offload_params: bool = False
    offload_optimizer: bool = False
    param_persistence_threshold: int = 100_000  # params smaller than this stay replicated
    overlap_comm: bool = True
    # stage 3 (other stages fetch nothing): block: hooks on each decoder layer of the language model (named in its
    # _no_split_modules) and plain Linears, far fewer host-side calls per step (jobs/sft/zero_hooks.py) | module:
    # DeepSpeed's fetch/release hooks on every submodule and its Linear wrapper
    granularity: str = "block"
    config_file: str | None = None  # raw DeepSpeed JSON, deep-merged over the generated config
    overrides: dict[str, Any] = field(default_factory=dict)  # same, inline


@dataclass
class OptimConfig:
    lr: float = 1e-4
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio (cosine/linear)
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0


@dataclass
class CheckpointConfig:
    every_n_steps: int = 0  # 0: only at the end
    save: bool = True  # false: no checkpoint at all (throwaway runs, benchmarks): a stopped or failed run starts over
    resume: str = "auto"  # auto: continue from this job's latest checkpoint | never | <checkpoint dir>
    keep_last: int = 2
    export: bool = True  # consolidated HF export (safetensors + config + tokenizer) at the end


@dataclass
class TrainerConfig:
    num_workers: int = 2  # one worker per GPU; CPU workers when use_gpu resolves false
    use_gpu: str = "auto"  # auto | true | false
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    max_steps: int = 20
    micro_batch_size: int = 1  # packed rows per worker per micro-step
    grad_accum: int = 1
    bf16: str = "auto"  # auto: on where the accelerator supports it | true | false
    activation_checkpointing: bool = False
    # RMSNorm, SwiGLU and rotary embedding compiled into fused kernels (kernels/fused); auto: on CUDA workers;
    # liger: the same ops from Liger-Kernel's Triton kernels (kernels/fused/liger.py)
    fused_ops: str = "auto"  # auto | true | false | liger
    # blocks: each decoder layer's forward compiled by torch.compile (jobs/sft/block_compile.py); ZeRO-3 needs
    # trainer.zero.granularity=block with it
    compile: str = "off"  # off | blocks
    # default: matmuls in the training dtype | fp8: torchao float8 matmuls in the blocks (jobs/sft/precision.py)
    precision: str = "default"
    fp8_scaling: str = "rowwise"  # rowwise | tensorwise (torchao's recipes)
    # N > 1: each row split over N ranks, Ulysses attention (jobs/sft/sequence_parallel.py); divides num_workers
    sequence_parallel: int = 1
    # > 0: the loss a chunk of this many target tokens at a time, never the whole logits (jobs/sft/chunked_loss.py)
    loss_chunk_tokens: int = 0
    seed: int = 0
    log_every: int = 1
    profile_step: int = 0  # > 0: that step runs under torch.profiler (jobs/sft/profile.py)
    peak_tflops: float | None = None  # per device; None: look it up by device name (no MFU on CPU)
    max_failures: int = 2  # worker-group restarts from the last checkpoint
    optim: OptimConfig = field(default_factory=OptimConfig)
    zero: ZeroConfig = field(default_factory=ZeroConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
