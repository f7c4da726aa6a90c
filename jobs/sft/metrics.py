"""Per-step throughput, MFU and memory."""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any

import torch

# Dense bf16 peak TFLOP/s per device, matched against torch.cuda.get_device_name().
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


def peak_tflops(configured: float | None, device: torch.device) -> float | None:
    if configured:
        return configured
    if device.type != "cuda":
        return None  # no honest peak for a CPU: MFU is left out
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def flops_per_token(hf_config: Any, non_embedding_params: int, seq_len: int) -> float:
    """6N for the matmuls with weights (forward + backward) + 12·L·H·T for attention scores."""
    text = getattr(hf_config, "text_config", None) or hf_config
    return 6.0 * non_embedding_params + 12.0 * text.num_hidden_layers * text.hidden_size * seq_len


def memory_stats(device: torch.device) -> dict[str, float]:
    gib = 1024**3
    if device.type == "cuda":
        return {
            "mem_max_alloc_gib": torch.cuda.max_memory_allocated(device) / gib,
            "mem_reserved_gib": torch.cuda.max_memory_reserved(device) / gib,
        }
    return {"mem_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / gib}


@dataclass
class Throughput:
    flops_per_token: float
    peak_tflops: float | None
    world_size: int
    tokens_total: int = 0
    seconds_total: float = 0.0

    def step(self, global_tokens: int, step_time: float) -> dict[str, float]:
        self.tokens_total += global_tokens
        self.seconds_total += step_time
        tgs = global_tokens / self.world_size / step_time
        out = {"tgs": tgs, "tgs_e2e": self.tokens_total / self.world_size / self.seconds_total}
        if self.peak_tflops:
            out["mfu"] = tgs * self.flops_per_token / (self.peak_tflops * 1e12)
        return out
