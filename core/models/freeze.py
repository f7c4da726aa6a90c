"""`model.freeze`: which parameters do not train, in the grammar every module selection uses (core/models/select.py):
  vision | projector | language | embeddings | lm_head   a module group (core/models/groups.py)
  <name or glob> a parameter or module name (and everything under it), e.g. model.layers.0 or *.mlp.*
  re:<regex>     parameters whose name (or module's) the regex is found in (re.search), e.g. re:layers\\.[0-3]\\.
  !<entry>       exclude: keep these trainable even if an include matched them, e.g. '!re:layers\\.11\\.'
                 (quote it on the command line: model.freeze='[language,"!re:layers\\.11\\."]')
Includes freeze, then excludes thaw (order of kind, not position). Names are `named_parameters()` names of the
built transformers model (print them: job=inspect), tied tensors under every name (lm_head.weight of a tied model).

Tied embeddings (qwen3_tiny, llava_tiny): lm_head and embed_tokens are one tensor, so freezing either
`embeddings` or `lm_head` freezes both; the report says so. To freeze only one, untie it
(model.overrides.tie_word_embeddings=false, and for a VLM its text_config's).

Errors are ConfigErrors naming `model.freeze`: a bad regex, an entry that matches nothing on this model, a group
of a VLM no family knows, an exclude that thaws nothing, or a freeze that leaves nothing to train. The jobs check
them before Ray starts, on a meta-device copy of the model (core/models/auto.py meta_model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError
from core.models.auto import meta_model
from core.models.groups import ModuleGroups, group_members, module_groups
from core.models.inspect import numel
from core.models.select import parse, select

FIELD = "model.freeze"


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


def resolve(model: Any, entries: list[str]) -> tuple[set[str], ModuleGroups]:
    """The canonical names of the parameters `entries` freeze, and the model's groups."""
    rules = parse(entries, FIELD)
    if rules and all(r.exclude for r in rules):
        raise ConfigError(FIELD, f"only exclusions ({', '.join(entries)}): nothing to freeze")
    groups = module_groups(model)
    for rule in rules:
        if rule.group in ("vision", "projector", "language") and not groups.known:
            raise ConfigError(FIELD, f"{rule.entry!r}: {groups.model_class} has no group layout "
                              "(no family in core/models/families/); use names or re:<regex> entries")
    canonical = {id(p): n for n, p in model.named_parameters()}
    aliases = {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}
    chosen = select(aliases, entries, FIELD, groups.model_class, group_members(model), what="parameter")
    frozen = {aliases[n] for n in chosen}
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
