"""Checkpoints under <job>/checkpoints/step_NNNNNN (local or s3://, through core.storage): DeepSpeed's
sharded model + optimizer + scheduler state, plus the step (the batch plan is a pure function of it) and
every rank's RNG. Every rank writes into a staging directory and pushes its own files; after a barrier
rank 0 commits, which writes the storage's COMPLETE marker last: a checkpoint counts only with it."""

from __future__ import annotations

import json
import pickle
import random
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from core import storage
from core.errors import ConfigError


def tag(step: int) -> str:
    return f"step_{step:06d}"


def complete_checkpoints(root: str | Path) -> list[str]:
    return storage.published_children(root, "step_")


def latest(root: str | Path) -> str | None:
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


def _shared_token(rank: int) -> str:
    """One staging token for all ranks of this save (rank 0 picks it)."""
    box = [uuid.uuid4().hex[:12] if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def save(engine: Any, root: str, step: int, rank: int, keep_last: int) -> str:
    final, token = storage.join(root, tag(step)), _shared_token(rank)
    staged = storage.staging_dir(final, token)
    engine.save_checkpoint(str(staged.parent), tag=staged.name, client_state={"step": step}, save_latest=False)
    torch.save(_rng_state(), staged / f"rng_rank{rank}.pt")
    storage.push(staged, final, token)
    dist.barrier()
    if rank == 0:
        storage.commit(final, token)
        for old in complete_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            storage.remove(old)
    dist.barrier()
    return final


def load(engine: Any, uri: str, rank: int) -> int:
    """Restore engine state and this rank's RNG; return the step the checkpoint was taken at."""
    path = storage.local_path(uri, field="trainer.checkpoint.resume")  # S3: a cached download
    try:
        _, client_state = engine.load_checkpoint(str(path.parent), tag=path.name)
        rng_file = path / f"rng_rank{rank}.pt"
        if rng_file.is_file():
            # numpy's RNG state holds arrays that weights_only loading refuses; our own file, written above
            _set_rng_state(torch.load(rng_file, weights_only=False))
        return int(client_state["step"])
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, KeyError, TypeError) as err:
        # marked COMPLETE but unreadable (a file truncated or changed after the save): the user decides what goes
        first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise unreadable(uri, first) from None


def unreadable(uri: str, why: str) -> ConfigError:
    return ConfigError("trainer.checkpoint.resume", f"{uri}: unreadable checkpoint ({why}); remove that directory "
                       "to resume from the one before, or start over with a new job.name")


def check_files(uri: str) -> None:
    """A local checkpoint's torch files (zip archives) end with their central directory: a truncated one fails
    here, before any worker starts. Reads each file's tail only. (An S3 checkpoint is checked where it loads.)"""
    path = Path(uri)
    if not path.is_dir():
        return
    for file in sorted(path.glob("*.pt")):
        try:
            zipfile.ZipFile(file).close()
        except (zipfile.BadZipFile, OSError) as err:
            raise unreadable(uri, f"{file.name}: {err}") from None


def record_resume(job_uri: str, source: str, step: int) -> None:
    """Append a resume to the job's history (<job>/resumes.json; rank 0 only). The summary reports it: the
    "resumed from" line is worker stdout, which Ray relays best effort (one was seen lost under load)."""
    history = resumes(job_uri) + [{"step": step, "from": source}]
    storage.write_text(storage.join(job_uri, "resumes.json"), json.dumps(history))


def resumes(job_uri: str) -> list[dict[str, Any]]:
    return json.loads(storage.read_text(storage.join(job_uri, "resumes.json")) or "[]")
