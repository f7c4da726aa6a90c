"""A Hugging Face model directory checked before anything loads it: config.json parses, the weights are
safetensors and whole. A truncated download or a pickle-only checkpoint is the user's to fix, named here
(before a cluster starts) instead of deep inside a worker's from_pretrained."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from core.errors import ConfigError

INDEX = "model.safetensors.index.json"
HEADER_LIMIT = 100 * 2**20  # a header this large is garbage, not a header


def read_json(path: Path, field: str) -> dict:
    """A JSON object file, or a ConfigError naming the field and file:line."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(field, f"{path}:{err.lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(field, f"{path}: cannot read ({getattr(err, 'strerror', None) or err})") from None
    if not isinstance(obj, dict):
        raise ConfigError(field, f"{path}: expected a JSON object")
    return obj


def weight_files(root: Path, field: str) -> list[Path]:
    """The safetensors files the directory's checkpoint consists of (sharded or not)."""
    if (root / INDEX).is_file():
        shards = sorted(set(read_json(root / INDEX, field).get("weight_map", {}).values()))
        missing = [name for name in shards if not (root / name).is_file()]
        if missing:
            raise ConfigError(field, f"{root / INDEX} lists {missing[0]}, which is not there")
        return [root / name for name in shards]
    files = sorted(root.glob("*.safetensors"))
    if files:
        return files
    if any(root.glob("pytorch_model*.bin")) or any(root.glob("*.pt")):
        raise ConfigError(field, f"{root}: only pickle weights (pytorch_model*.bin), which are not loaded (they "
                          "can run code); convert them to safetensors (save_pretrained(..., safe_serialization=True))")
    raise ConfigError(field, f"{root}: no weights (*.safetensors)")


def check_safetensors(path: Path, field: str) -> None:
    """The header parses and the file is as long as the header says (a cut-off download is not)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < header_len <= min(HEADER_LIMIT, size - 8):
            raise ConfigError(field, f"{path}: not a safetensors file (bad header)")
        try:
            header = json.loads(fh.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(field, f"{path}: not a safetensors file (bad header)") from None
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + header_len + max(ends, default=0)
    if size < expected:
        raise ConfigError(field, f"{path}: truncated ({size} of {expected} bytes): download or copy it again")


def check_model_dir(root: Path, field: str, weights: bool = True) -> dict:
    """config.json (returned, parsed) and, with `weights`, every safetensors file of the checkpoint."""
    if not (root / "config.json").is_file():
        raise ConfigError(field, f"{root}: no config.json there (not a Hugging Face model dir)")
    config = read_json(root / "config.json", field)
    if weights:
        for path in weight_files(root, field):
            check_safetensors(path, field)
    return config
