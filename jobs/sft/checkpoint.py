"""Checkpoints under <job_dir>/checkpoints/step_NNNNNN: DeepSpeed's sharded model + optimizer +
scheduler state, plus the step (the batch plan is a pure function of it) and every rank's RNG.
A checkpoint counts only once rank 0 has written COMPLETE after all ranks saved."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

COMPLETE = "COMPLETE"


def tag(step: int) -> str:
    return f"step_{step:06d}"


def complete_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / COMPLETE).is_file())


def latest(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine: Any, root: Path, step: int, rank: int, keep_last: int) -> Path:
    name = tag(step)
    engine.save_checkpoint(str(root), tag=name, client_state={"step": step}, save_latest=False)
    torch.save(_rng_state(), root / name / f"rng_rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        (root / name / COMPLETE).write_text(str(step))
        for old in complete_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return root / name


def load(engine: Any, path: Path, rank: int) -> int:
    """Restore engine state and this rank's RNG; return the step the checkpoint was taken at."""
    _, client_state = engine.load_checkpoint(str(path.parent), tag=path.name)
    rng_file = path / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        # numpy's RNG state holds arrays that weights_only loading refuses; our own file, written above
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return int(client_state["step"])
