"""Bad multimodal data through the real CLI (in process): one line naming file:line and the image, exit 2,
the MLflow run FAILED, Ray never started."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from data.shapes.make_shapes import draw
from tests.orchestrator.test_bad_data import _assert_failed


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-mm-data") / "runs"


def _sample(url: str, part_type: str = "image_url") -> str:
    part = {"type": part_type, part_type: {"url": url}}
    return json.dumps({"messages": [{"role": "user", "content": [part, {"type": "text", "text": "What is it?"}]},
                                    {"role": "assistant", "content": "A red circle."}]})


def _dataset(tmp_path: Path, second_line: str) -> Path:
    draw("circle", "red", 64, random.Random(0)).save(tmp_path / "good.png")
    path = tmp_path / "data.jsonl"
    path.write_text(_sample("good.png") + "\n" + second_line + "\n")
    return path


def _run(cli, storage: Path, path: Path, *extra: str, fmt: str = "mm_chat_jsonl", model: str = "llava_tiny"):
    return cli([f"model={model}", f"data.datasets=[{{path: {path}, format: {fmt}}}]", *extra], storage)


def test_missing_image(tmp_path: Path, storage: Path, cli_in_process) -> None:
    path = _dataset(tmp_path, _sample("nope.png"))
    _assert_failed(_run(cli_in_process, storage, path), storage,
                   f"data error: {path}:2: image {tmp_path}/nope.png: no such file")


@pytest.mark.parametrize("content", ["garbage", "truncated_png"])
def test_corrupt_image(content: str, tmp_path: Path, storage: Path, cli_in_process) -> None:
    path = _dataset(tmp_path, _sample("bad.png"))
    good = (tmp_path / "good.png").read_bytes()
    (tmp_path / "bad.png").write_bytes(b"not an image" if content == "garbage" else good[: len(good) // 2])
    _assert_failed(_run(cli_in_process, storage, path), storage,
                   f"data error: {path}:2: image {tmp_path}/bad.png: not a readable image (")


def test_unknown_part_type(tmp_path: Path, storage: Path, cli_in_process) -> None:
    path = _dataset(tmp_path, _sample("good.png", part_type="video_url"))
    _assert_failed(_run(cli_in_process, storage, path), storage,
                   f"data error: {path}:2: messages[0].content[0] has unknown part type 'video_url' "
                   "(known: text, image_url)")


def test_truncation_through_an_image_with_truncation_error(tmp_path: Path, storage: Path, cli_in_process) -> None:
    path = _dataset(tmp_path, _sample("good.png"))
    result = _run(cli_in_process, storage, path, "data.max_length=40", "data.pack_max_length=40",  # 41 + 64 tokens
                  "data.truncation=error")
    _assert_failed(result, storage, f"data error: {path}:1: sample has 105 tokens > data.max_length=40 "
                   "(the cut would go through image 1's tokens)")


def test_image_parts_in_a_text_only_format(tmp_path: Path, storage: Path, cli_in_process) -> None:
    path = _dataset(tmp_path, _sample("good.png"))
    _assert_failed(_run(cli_in_process, storage, path, fmt="chat_jsonl"), storage,
                   f"data error: {path}:1: has image parts: use format mm_chat_jsonl")


def test_images_for_a_text_only_model(tmp_path: Path, storage: Path, cli_in_process) -> None:
    path = _dataset(tmp_path, _sample("good.png"))
    _assert_failed(_run(cli_in_process, storage, path, model="qwen3_tiny"), storage,
                   f"config error: data.datasets[0]: {path}:1 has images but the model has no image processor")
