"""One module-selection grammar, one parser: `model.freeze`, `quant.ignore` and `search.ignore` all read entries so.

An entry selects dotted names (parameter names for model.freeze, Linear module names for the ignore lists):
  <name or glob>   fnmatch, matched against the whole name or any dotted prefix of it: `lm_head` selects
                   `lm_head` and `lm_head.weight`, `model.layers.0` everything in block 0, `*.down_proj` every
                   down_proj
  re:<regex>       names in which the regex is found (re.search), e.g. re:layers\\.[0-3]\\.
  vision | projector | language | embeddings | lm_head
                   a module group (core/models/groups.py; the group wins over a module of the same name): its
                   parameters, or the modules holding them
  !<entry>         exclude what the entry selects from what the other entries select
So the same entry selects the same modules in all three settings (tests/core/models/test_select.py). Every entry
must select something on the model at hand: else one ConfigError naming the field and the entry.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError

EXCLUDE, REGEX = "!", "re:"
GROUPS = ("vision", "projector", "language", "embeddings", "lm_head")
SYNTAX = f"a name or glob, re:<regex>, a group ({', '.join(GROUPS)}), !<entry> to exclude"


@dataclass(frozen=True)
class Rule:
    entry: str  # as written
    exclude: bool
    group: str | None = None
    pattern: re.Pattern | None = None  # re: entries
    glob: str | None = None  # names and globs

    def selects(self, name: str, groups: dict[str, set[str]] | None) -> bool:
        if self.group is not None and groups is not None:
            members = groups.get(self.group, set())
            return name in members or any(m.startswith(name + ".") for m in members)
        if self.pattern is not None:
            return self.pattern.search(name) is not None
        parts = name.split(".")
        return any(fnmatch.fnmatchcase(".".join(parts[:i]), self.glob) for i in range(1, len(parts) + 1))


def parse(entries: Iterable[str], field: str, with_groups: bool = True) -> list[Rule]:
    """Syntax only (no model needed)."""
    rules = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.lstrip(EXCLUDE).strip():
            raise ConfigError(field, f"empty entry {entry!r} ({SYNTAX})")
        exclude = entry.startswith(EXCLUDE)
        body = entry[1:] if exclude else entry
        if body.startswith(REGEX):
            try:
                rules.append(Rule(entry, exclude, pattern=re.compile(body[len(REGEX):])))
            except re.error as err:
                raise ConfigError(field, f"{entry!r}: not a valid regex ({err})") from None
        elif with_groups and body in GROUPS:
            rules.append(Rule(entry, exclude, group=body))
        else:
            rules.append(Rule(entry, exclude, glob=body))
    return rules


def select(names: Iterable[str], entries: Iterable[str], field: str, model_class: str,
           groups: dict[str, set[str]] | None = None, what: str = "module") -> set[str]:
    """The names the entries select (includes, less excludes). `groups`: group -> member parameter names (None:
    group words are plain names). An entry that selects nothing is a ConfigError naming `field`."""
    names = list(names)
    rules = parse(entries, field, with_groups=groups is not None)
    chosen: set[str] = set()
    for rule in (r for r in rules if not r.exclude):
        found = {n for n in names if rule.selects(n, groups)}
        if not found:
            raise ConfigError(field, f"{rule.entry!r}: matches no {what} of "
                              f"{model_class} (names look like {names[0] if names else ''!r}; job=inspect lists them)")
        chosen |= found
    for rule in (r for r in rules if r.exclude):
        if not {n for n in chosen if rule.selects(n, groups)}:
            raise ConfigError(field, f"{rule.entry!r} excludes nothing the other entries select")
        chosen = {n for n in chosen if not rule.selects(n, groups)}
    return chosen


def select_linears(model: Any, entries: Iterable[str], field: str) -> set[str]:
    """The Linear modules of `model` that `entries` select (quant.ignore, search.ignore)."""
    from torch import nn

    from core.models.groups import group_members

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return select(names, entries, field, type(model).__name__, group_members(model))
