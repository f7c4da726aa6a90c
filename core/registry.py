"""One small registry type for every extension point (job kinds, models, datasets, algorithms).

Entries may be objects or lazy "module:attr" strings, so that composing a spec or printing it
(`--cfg job`) never imports torch, Ray or DeepSpeed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str, field: str) -> None:
        self.what, self.field = what, field  # e.g. ("model", "model.name"), for error messages
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, target: T | str | None = None) -> Callable[[T], T] | None:
        if target is not None:
            self._add(name, target)
            return None

        def decorator(obj: T) -> T:
            self._add(name, obj)
            return obj

        return decorator

    def _add(self, name: str, target: T | str) -> None:
        if name in self._entries and self._entries[name] is not target:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self._entries[name] = target

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(self.field, f"unknown {self.what} {name!r} (known: {', '.join(self.names())})")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

