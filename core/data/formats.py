"""Dataset formats: each reads a file into validated records, naming file:line on bad input.

A format is `reader(path, spec) -> Iterator[Record]` (`spec`: the DatasetSpec, e.g. its media_root).
Message content is a string or a list of OpenAI-style parts: {"type": "text", "text": ...} or
{"type": "image_url", "image_url": {"url": ...}}; image parts need `mm_chat_jsonl` (core/data/multimodal.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import DataError
from core.registry import Registry

ROLES = ("system", "user", "assistant", "tool")
PART_TYPES = ("text", "image_url")


@dataclass
class Record:
    source: str  # "file:line", for messages about this record
    messages: list[dict[str, Any]]
    images: list[str] = field(default_factory=list)  # image parts' urls in order (mm_chat_jsonl: local paths)


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The non-empty lines of a UTF-8 text file with their numbers; unreadable files and undecodable bytes are
    DataErrors naming the file (and the line)."""
    try:
        with open(path, "rb") as fh:
            for line_no, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(str(path), line_no, f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
                                    f"{err.start + 1})") from None
                if line.strip():
                    yield line_no, line.rstrip("\r\n")
    except OSError as err:
        raise DataError(str(path), None, f"cannot read: {err.strerror or err}") from None


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    for line_no, line in read_lines(path):
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(str(path), line_no, f"malformed JSON ({err.msg} at column {err.colno})") from None


def _check_message(path: Path, line_no: int, index: int, msg: Any) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(msg, dict):
        raise DataError(str(path), line_no, f"{where} is not an object")
    for key in ("role", "content"):
        if key not in msg:
            raise DataError(str(path), line_no, f"{where} has no '{key}'")
    if msg["role"] not in ROLES:
        raise DataError(str(path), line_no, f"{where} has unknown role {msg['role']!r} (known: {', '.join(ROLES)})")
    content = msg["content"]
    if not isinstance(content, (str, list)):
        raise DataError(str(path), line_no, f"{where}.content must be a string or a list of parts")
    if "loss" in msg and not isinstance(msg["loss"], bool):
        raise DataError(str(path), line_no, f"{where}.loss must be true or false")
    if isinstance(content, list):
        for j, part in enumerate(content):
            _check_part(path, line_no, f"{where}.content[{j}]", part)
    return msg


def _check_part(path: Path, line_no: int, where: str, part: Any) -> None:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind not in PART_TYPES:
        raise DataError(str(path), line_no, f"{where} has unknown part type {kind!r} (known: {', '.join(PART_TYPES)})")
    if kind == "text" and not isinstance(part.get("text"), str):
        raise DataError(str(path), line_no, f"{where} has no string 'text'")
    image = part.get("image_url")
    if kind == "image_url" and not (isinstance(image, dict) and isinstance(image.get("url"), str) and image["url"]):
        raise DataError(str(path), line_no, f"{where} has no image_url.url string")


def image_urls(messages: list[dict[str, Any]]) -> list[str]:
    return [part["image_url"]["url"] for m in messages if isinstance(m["content"], list)
            for part in m["content"] if part["type"] == "image_url"]


def read_chat_jsonl(path: Path, spec: Any = None, images: bool = False) -> Iterator[Record]:
    """OpenAI-style chat: {"messages": [...]} per line, or a bare list of messages; image parts only
    where `images` (the mm_chat_jsonl reader resolves and checks them)."""
    for line_no, obj in read_jsonl(path):
        if isinstance(obj, dict):
            if "messages" not in obj:
                raise DataError(str(path), line_no, "sample has no 'messages'")
            messages = obj["messages"]
        else:
            messages = obj
        if not isinstance(messages, list) or not messages:
            raise DataError(str(path), line_no, "'messages' must be a non-empty list")
        checked = [_check_message(path, line_no, i, m) for i, m in enumerate(messages)]
        urls = image_urls(checked)
        if urls and not images:
            raise DataError(str(path), line_no, "has image parts: use format mm_chat_jsonl (and a VLM)")
        yield Record(source=f"{path}:{line_no}", messages=checked, images=urls)


FORMATS: Registry = Registry("dataset format", "data.datasets[].format")
FORMATS.register("chat_jsonl", read_chat_jsonl)
FORMATS.register("mm_chat_jsonl", "core.data.multimodal:read_mm_chat_jsonl")
