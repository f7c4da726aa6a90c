"""One module-selection grammar, one parser: `model.freeze`, `quant.ignore` and `search.ignore` all read entries so.

An entry selects dotted names (parameter names for model.freeze, Linear module names for the ignore lists). Names,
globs and regexes share one rule: an entry selects a name when it matches the name or any dotted prefix of it (the
module holding it), so a module and its parameters are selected alike and `lm_head` selects `lm_head.weight`:
  <name or glob>   fnmatch, full match: `lm_head` selects `lm_head` and `lm_head.weight`, `model.layers.0`
                   everything in block 0 (not block 0x: dotted parts, not characters), `*.down_proj` every down_proj
  re:<regex>       Python regex, found in the name or a dotted prefix (re.search), e.g. re:layers\\.[0-3]\\.
                   (so model.freeze's `re:layers\\.2\\.` keeps its meaning). A compressed-tensors entry (re:
                   fullmatch) selects at least what it selects there; anchor it (re:^...$) to match whole names
  vision | projector | language | embeddings | lm_head
                   a module group (core/models/groups.py; the group wins over a module of the same name): its
                   parameters, or the modules holding them. Only where groups apply (select(groups=None): names)
  !<entry>         exclude what the entry selects from what the other entries select (order does not matter)
So the same entry selects the same modules in all three settings (tests/core/models/test_select.py). Every include
must select something on the model at hand, else one ConfigError(<field>, "'<entry>': matches no module of <model
class> ...") (`parameter` for model.freeze); an exclude must remove something. quant.ignore reaches the export's
compressed-tensors `ignore` list as the selected Linears' exact names (jobs/quantize/blockloop.py export).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError

EXCLUDE, REGEX = "!", "re:"
GROUPS = ("vision", "projector", "language", "experts", "routers", "embeddings", "lm_head")  # core/models/groups.py
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
        parts = name.split(".")
        prefixes = (".".join(parts[:i]) for i in range(len(parts), 0, -1))  # the name, then its modules
        if self.pattern is not None:
            return any(self.pattern.search(p) is not None for p in prefixes)
        return any(fnmatch.fnmatchcase(p, self.glob) for p in prefixes)


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
