"""core/models/files.py: a model directory's mistakes found before anything loads it, one line each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.errors import ConfigError
from core.models.files import check_model_dir


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "m"
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": "qwen3"}, indent=2))
    save_file({"w": torch.zeros(64, 64), "b": torch.ones(64)}, str(root / "model.safetensors"))
    return root


def test_a_whole_directory_passes(model_dir: Path) -> None:
    assert check_model_dir(model_dir, "model.path") == {"model_type": "qwen3"}


def test_invalid_config_json_names_file_and_line(model_dir: Path) -> None:
    (model_dir / "config.json").write_text('{\n  "model_type": "qwen3",\n  oops\n}')
    with pytest.raises(ConfigError, match=r"model.path: .*/config.json:3: invalid JSON"):
        check_model_dir(model_dir, "model.path")


def test_truncated_safetensors(model_dir: Path) -> None:
    path = model_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ConfigError, match=r"model.safetensors: truncated \(\d+ of \d+ bytes\)"):
        check_model_dir(model_dir, "model.path")
    path.write_bytes(b"\x00" * 4)
    with pytest.raises(ConfigError, match="not a safetensors file"):
        check_model_dir(model_dir, "model.path")


def test_pickle_only_weights_are_refused(model_dir: Path) -> None:
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ConfigError, match=r"only pickle weights \(pytorch_model\*.bin\)"):
        check_model_dir(model_dir, "model.path")


def test_a_sharded_index_naming_a_missing_shard(model_dir: Path) -> None:
    shutil.move(model_dir / "model.safetensors", model_dir / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"w": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match="lists model-00002-of-00002.safetensors, which is not there"):
        check_model_dir(model_dir, "model.path")
