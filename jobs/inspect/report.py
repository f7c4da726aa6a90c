"""The inspect job's text: a parameter table and a module-group table (markdown, printed and logged)."""

from __future__ import annotations

from typing import Any


def parameter_table(info: dict[str, Any]) -> str:
    rows = ["| parameter | shape | group | trainable | params |", "|---|---|---|---|---:|"]
    for p in info["parameters"]:
        count = 1
        for dim in p["shape"]:
            count *= dim
        rows.append(f"| {p['name']} | {tuple(p['shape'])} | {p['group']} | {'yes' if p['trainable'] else 'no'} "
                    f"| {count:,} |")
    return "\n".join(rows)


def group_table(info: dict[str, Any]) -> str:
    rows = ["| group | params | trainable | tensors |", "|---|---:|---:|---:|"]
    for group, c in info["groups"].items():
        tied = f" (tied to {info['tied'][group]})" if group in info["tied"] else ""
        rows.append(f"| {group}{tied} | {c['params']:,} | {c['trainable']:,} | {c['tensors']} |")
    rows.append(f"| total | {info['total_params']:,} | {info['trainable_params']:,} | {len(info['parameters'])} |")
    return "\n".join(rows)
