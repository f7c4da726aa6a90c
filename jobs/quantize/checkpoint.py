"""Per-block checkpoints under <job>/blocks (local or s3://, through core.storage), so a killed job resumes
at the next block.

blocks/manifest.json          spec hash (quant/calib/model sections) + model config hash + block count
blocks/block_NNN/             published atomically (core.storage: staging dir, then rename or upload,
                              COMPLETE marker last) once the block is done:
  quant.safetensors           "<linear>.qweight" int8, ".scale" f32, ".zero" int8 per quantized Linear;
                              "other.<param>" every other block tensor after quantization (smoothed norms);
                              "smooth.<producer>" smoothing scales (AWQ/SmoothQuant)
  metrics.json                the block's metrics and algorithm info
blocks/inputs_NNN/            parallel=data only: the inputs of block NNN + 1, inputs_rank<r>.safetensors
                              per worker ("batch_<k>"); published before block_NNN, and the one before
                              it removed after, so a resume always finds the last finished block's
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file

from core import storage
from core.errors import ConfigError

MANIFEST = "manifest.json"
QUANT_FILE = "quant.safetensors"
# fields that change how a job runs, not what it computes
UNHASHED_QUANT_FIELDS = ("resume", "export", "cpus_per_worker")
P = TypeVar("P", str, Path)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def spec_hash(spec: Any) -> str:
    quant = {k: v for k, v in _plain(spec.quant).items() if k not in UNHASHED_QUANT_FIELDS}
    return _digest({"quant": quant, "calib": _plain(spec.calib), "model": _plain(spec.model)})


def model_hash(hf_config: Any) -> str:
    return _digest(hf_config.to_dict())


def _plain(section: Any) -> dict:
    return asdict(section) if is_dataclass(section) else dict(section)


def block_dir(root: P, index: int) -> P:
    return storage.join(root, f"block_{index:03d}")


def check_manifest(root: str | Path, expected: dict[str, Any], resume: str) -> int:
    """Number of finished blocks to skip; writes the manifest for a fresh start. Refuses a mismatch."""
    text = storage.read_text(storage.join(root, MANIFEST))
    if text is None:
        storage.write_text(storage.join(root, MANIFEST), json.dumps(expected, indent=2))
        return 0
    found = json.loads(text)
    done = finished_blocks(root)
    if resume == "never" and done:
        raise ConfigError("quant.resume", f"never, but {root} has {done} finished block(s): use resume=auto "
                          "or a new job.name")
    for key, what in (("spec_hash", "quant/calib/model sections"), ("model_hash", "model config")):
        if found.get(key) != expected[key]:
            raise ConfigError("quant.resume", f"{root} was written for other {what} ({key} {found.get(key)} != "
                              f"{expected[key]}): use a new job.name or delete that directory")
    return done


def finished_blocks(root: str | Path) -> int:
    count = 0
    while storage.is_published(block_dir(root, count)):
        count += 1
    return count


def finished_set(root: str | Path) -> set[int]:
    """Every finished block (blocks mode finishes them out of order)."""
    return {int(str(uri).rsplit("_", 1)[1]) for uri in storage.published_children(root, "block_")}


def inputs_dir(root: P, index: int) -> P:
    """The inputs of block index + 1 (parallel=data), one file per worker; only the latest is kept."""
    return storage.join(root, f"inputs_{index:03d}")


def block_metrics(root: str | Path, index: int) -> dict[str, Any]:
    return json.loads(storage.read_text(storage.join(block_dir(root, index), "metrics.json")) or "{}")


def save_block(staged: Path, result: Any, block_state: dict[str, torch.Tensor], metrics: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in result.layers.items():
        tensors[f"{name}.qweight"] = layer.qweight
        tensors[f"{name}.scale"] = layer.scale
        tensors[f"{name}.zero"] = layer.zero
    quantized = {f"{name}.weight" for name in result.layers}
    for key, value in block_state.items():
        if key not in quantized:
            tensors[f"other.{key}"] = value
    for prev, scales in result.smoothing.items():
        tensors[f"smooth.{prev}"] = scales.float()
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, staged / QUANT_FILE)
    (staged / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str))


def load_block(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """{"layers": {linear: {qweight, scale, zero}}, "other": {param: t}, "smooth": {producer: s}}."""
    out: dict[str, dict] = {"layers": {}, "other": {}, "smooth": {}}
    for key, value in load_file(storage.local_path(storage.join(path, QUANT_FILE), field="quant.resume")).items():
        kind, _, rest = key.partition(".")
        if kind in ("other", "smooth"):
            out[kind][rest] = value
        else:
            name, _, field = key.rpartition(".")
            out["layers"].setdefault(name, {})[field] = value
    return out


def save_inputs(staged: Path, rank: int, batches: list[torch.Tensor]) -> None:
    tensors = {f"batch_{k:04d}": b.detach().cpu().contiguous() for k, b in enumerate(batches)}
    save_file(tensors, staged / f"inputs_rank{rank}.safetensors")


def load_inputs(root: str | Path, index: int, rank: int) -> list[torch.Tensor]:
    uri = storage.join(inputs_dir(root, index), f"inputs_rank{rank}.safetensors")
    tensors = load_file(storage.local_path(uri, field="quant.resume"))
    return [tensors[k] for k in sorted(tensors)]


def plain_metrics(obj: Any) -> Any:
    """Algorithm info (tensors, tuples) as JSON-friendly values."""
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, dict):
        return {str(k): plain_metrics(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_metrics(v) for v in obj]
    return obj
