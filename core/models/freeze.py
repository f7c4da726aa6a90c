"""`model.freeze`: which parameters do not train.

Entries, applied in order of kind (not position): every include freezes, then every exclude thaws.
  vision | projector | language | embeddings | lm_head   a module group (core/models/groups.py)
  re:<regex>     parameters whose name matches (re.search) the regex, e.g. re:layers\\.[0-3]\\.
  !<entry>       exclude: keep these trainable even if an include matched them, e.g. '!re:layers\\.11\\.'
                 (quote it on the command line: model.freeze='[language,"!re:layers\\.11\\."]')
Names are `named_parameters()` names of the built transformers model (print them: job=inspect). A
regex also sees the names of tied tensors (lm_head.weight of a tied model).

Tied embeddings (qwen3_tiny, llava_tiny): lm_head and embed_tokens are one tensor, so freezing either
`embeddings` or `lm_head` freezes both; the report says so. To freeze only one, untie it
(model.overrides.tie_word_embeddings=false, and for a VLM its text_config's).

Errors are ConfigErrors naming `model.freeze`: an unknown group, a bad regex, an entry that matches
nothing on this model, an exclude that thaws nothing, or a freeze that leaves nothing to train. The
jobs check them before Ray starts, on a meta-device copy of the model (core/models/auto.py meta_model).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError
from core.models.auto import meta_model
from core.models.groups import GROUPS, ModuleGroups, module_groups
from core.models.inspect import numel

FIELD = "model.freeze"
EXCLUDE, REGEX = "!", "re:"
SYNTAX = f"groups: {', '.join(GROUPS)}; re:<regex>; !<entry> to exclude"


@dataclass(frozen=True)
class Rule:
    entry: str  # as written
    exclude: bool
    group: str | None = None
    pattern: re.Pattern | None = None


@dataclass
class FreezeReport:
    frozen: list[str]  # parameter names (named_parameters), now requires_grad=False
    frozen_params: int
    trainable_params: int
    notes: list[str]  # e.g. the tied-embeddings consequence

    def line(self) -> str:
        notes = "; ".join(self.notes)
        return (f"{FIELD}: {len(self.frozen)} tensors ({self.frozen_params:,} params) frozen, "
                f"{self.trainable_params:,} params trainable" + (f" ({notes})" if notes else ""))


def parse_rules(entries: list[str]) -> list[Rule]:
    """Syntax only (no model needed)."""
    rules = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.lstrip(EXCLUDE).strip():
            raise ConfigError(FIELD, f"empty entry {entry!r} ({SYNTAX})")
        exclude = entry.startswith(EXCLUDE)
        body = entry[1:] if exclude else entry
        if body.startswith(REGEX):
            try:
                rules.append(Rule(entry, exclude, pattern=re.compile(body[len(REGEX):])))
            except re.error as err:
                raise ConfigError(FIELD, f"{entry!r}: not a valid regex ({err})") from None
        elif body in GROUPS:
            rules.append(Rule(entry, exclude, group=body))
        else:
            raise ConfigError(FIELD, f"unknown group {body!r} ({SYNTAX})")
    if rules and all(r.exclude for r in rules):
        raise ConfigError(FIELD, f"only exclusions ({', '.join(entries)}): nothing to freeze")
    return rules


def _matches(rule: Rule, groups: ModuleGroups, aliases: dict[str, str]) -> set[str]:
    """Canonical parameter names the rule selects; a ConfigError if it selects none."""
    if rule.group is not None:
        if not groups.known and rule.group in ("vision", "projector", "language"):
            raise ConfigError(FIELD, f"{rule.entry!r}: {groups.model_class} has no group layout "
                              "(no family in core/models/families/); use re:<regex> entries")
        found = set(groups.members(rule.group))
        if not found:
            raise ConfigError(FIELD, f"{rule.entry!r}: {groups.model_class} has no {rule.group} parameters")
        return found
    found = {canonical for name, canonical in aliases.items() if rule.pattern.search(name)}
    if not found:
        example = next(iter(aliases), "")
        raise ConfigError(FIELD, f"{rule.entry!r} matches no parameter of {groups.model_class} (names look like "
                          f"{example!r}; job=inspect lists them)")
    return found


def resolve(model: Any, entries: list[str]) -> tuple[set[str], ModuleGroups]:
    rules = parse_rules(entries)
    groups = module_groups(model)
    canonical = {id(p): n for n, p in model.named_parameters()}
    aliases = {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}
    frozen: set[str] = set()
    for rule in (r for r in rules if not r.exclude):
        frozen |= _matches(rule, groups, aliases)
    for rule in (r for r in rules if r.exclude):
        thawed = _matches(rule, groups, aliases) & frozen
        if not thawed:
            raise ConfigError(FIELD, f"{rule.entry!r} excludes nothing the other entries freeze")
        frozen -= thawed
    if frozen and len(frozen) == len(canonical):
        raise ConfigError(FIELD, f"{', '.join(entries)} freezes every parameter: nothing left to train")
    return frozen, groups


def check_freeze(source: Any, cfg: Any) -> None:
    """Every model.freeze error, before Ray starts: resolved against a meta-device copy of the model."""
    if cfg.freeze:
        resolve(meta_model(source, cfg), list(cfg.freeze))


def apply_freeze(model: Any, entries: list[str]) -> FreezeReport | None:
    """Set requires_grad=False on the selected parameters (after the model is built, before the
    optimizer sees it). None when `entries` is empty."""
    if not entries:
        return None
    frozen, groups = resolve(model, entries)
    params = dict(model.named_parameters())
    for name in frozen:
        params[name].requires_grad_(False)
    notes = []
    if "lm_head" in groups.tied and set(groups.members("lm_head")) & frozen:
        notes.append("lm_head is tied to embeddings: the shared tensor is frozen for both")
    return FreezeReport(
        frozen=[n for n in params if n in frozen],
        frozen_params=sum(numel(params[n]) for n in frozen),
        trainable_params=sum(numel(p) for p in params.values() if p.requires_grad),
        notes=notes,
    )
