"""Secrets never reach MLflow, logs or printed specs: redact by key name, by value shape, and by
the literal values of secret-looking environment variables."""

from __future__ import annotations

import io
import logging
import os
import re
import sys
from collections.abc import Iterable
from typing import Any

MASK = "***"
DEFAULT_KEY_PATTERNS = [r"secret", r"token", r"passw(or)?d", r"api[_-]?key", r"access[_-]?key", r"credential",
                        r"private[_-]?key", r"session[_-]?key", r"auth"]
DEFAULT_VALUE_PATTERNS = [r"AKIA[0-9A-Z]{16}", r"ASIA[0-9A-Z]{16}", r"hf_[A-Za-z0-9]{20,}",
                          r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"]  # user:password@ in URLs
MIN_SECRET_LEN = 6


class Redactor:
    def __init__(self, key_patterns: Iterable[str] = (), value_patterns: Iterable[str] = ()) -> None:
        self.key_re = re.compile("|".join([*DEFAULT_KEY_PATTERNS, *key_patterns]), re.IGNORECASE)
        self.value_re = re.compile("|".join([*DEFAULT_VALUE_PATTERNS, *value_patterns]))
        self.literals = sorted(
            {v for k, v in os.environ.items() if self.key_re.search(k) and len(v) >= MIN_SECRET_LEN},
            key=len, reverse=True,
        )

    def text(self, text: str) -> str:
        for literal in self.literals:
            text = text.replace(literal, MASK)
        return self.value_re.sub(MASK, text)

    def value(self, key: str, value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if self.key_re.search(key.rsplit(".", 1)[-1]):
            return MASK
        return self.text(value) if isinstance(value, str) else value

    def tree(self, obj: Any, key: str = "") -> Any:
        """Redact a nested dict/list (e.g. a resolved spec) by key and by value."""
        if isinstance(obj, dict):
            return {k: self.tree(v, f"{key}.{k}" if key else str(k)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.tree(v, key) for v in obj]
        return self.value(key, obj)


class RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.text(record.getMessage())
        record.args = None
        return True


class RedactingStream(io.TextIOBase):
    """A text stream (sys.stdout / sys.stderr) whose every write passes the redactor first: tracebacks, warnings,
    progress bars and Ray's forwarded worker output are covered, not only log records. Each write is redacted
    whole (print, tqdm, traceback and logging write a line or more at a time)."""

    def __init__(self, stream: Any, redactor: Redactor) -> None:
        super().__init__()
        self.stream = getattr(stream, "stream", stream)  # never wrap a wrapper
        self.redactor = redactor

    def write(self, text: str) -> int:
        self.stream.write(self.redactor.text(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except ValueError:  # closed (a test harness's capture, at exit)
            return False

    @property
    def closed(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.stream, "closed", False))

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


def redact_std_streams(redactor: Redactor) -> None:
    """sys.stdout and sys.stderr through `redactor` from now on (called again with a fuller one: replaces it)."""
    sys.stdout = RedactingStream(sys.stdout, redactor)
    sys.stderr = RedactingStream(sys.stderr, redactor)
