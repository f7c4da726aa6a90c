"""What a model is made of: tree, parameter counts (correct under ZeRO-3), trainable names."""

from __future__ import annotations

from typing import Any


def numel(param: Any) -> int:
    # Under ZeRO-3 a parameter's local tensor is a shard (often empty); ds_numel is its full size.
    return int(getattr(param, "ds_numel", param.numel()))


def full_shape(param: Any) -> list[int]:
    return list(getattr(param, "ds_shape", param.shape))


def describe(model: Any) -> dict[str, Any]:
    from core.models.groups import group_counts, module_groups  # groups imports numel from here

    params = list(model.named_parameters())
    trainable = [(n, p) for n, p in params if p.requires_grad]
    groups = module_groups(model)
    group_of = groups.group_of()
    return {
        "class": type(model).__name__,
        "total_params": sum(numel(p) for _, p in params),
        "trainable_params": sum(numel(p) for _, p in trainable),
        "trainable_names": [n for n, _ in trainable],
        "groups": group_counts(model, groups),
        "tied": groups.tied,
        "parameters": [{"name": n, "shape": full_shape(p), "group": group_of[n], "trainable": p.requires_grad}
                       for n, p in params],
        "tree": str(model),
    }


def embedding_params(model: Any) -> int:
    embeddings = model.get_input_embeddings()
    return sum(numel(p) for p in embeddings.parameters()) if embeddings is not None else 0
