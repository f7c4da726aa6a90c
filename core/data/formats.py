"""Dataset formats: each reads a file into validated records, naming file:line on bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import DataError
from core.registry import Registry

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Record:
    source: str  # "file:line", for messages about this record
    messages: list[dict[str, Any]]


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
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
    return msg


def read_chat_jsonl(path: Path) -> Iterator[Record]:
    """OpenAI-style chat: {"messages": [...]} per line, or a bare list of messages."""
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
        yield Record(source=f"{path}:{line_no}", messages=checked)


FORMATS: Registry = Registry("dataset format", "data.datasets[].format")
FORMATS.register("chat_jsonl", read_chat_jsonl)
