from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class ModelConfig:
    """Which model to build or load. `name` picks the registry entry (core/models/registry.py)."""

    name: str = MISSING
    path: str | None = None  # local dir or s3:// for registry entries that load weights
    overrides: dict[str, Any] = field(default_factory=dict)  # transformers config fields
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False  # off unless the user opts in: remote code runs on every worker
    seed: int = 0  # init of a model built from a config (random weights): every job and process the same model
    zero_init: str = "auto"  # auto | on | off: build/load the model under deepspeed.zero.Init
    # parameters that do not train: groups (vision, projector, language, embeddings, lm_head), re:<regex>,
    # !<entry> to exclude; syntax and tied-embedding rule in core/models/freeze.py
    freeze: list[str] = field(default_factory=list)
