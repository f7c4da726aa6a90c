"""What the evaluate driver prints and logs: one table line per model, and the per-token KL histogram."""

from __future__ import annotations

from typing import Any

import numpy as np

Column = tuple[str, str, str]  # (header, metric key, format spec)


def table(models: list[tuple[str, str, str | None, dict]], results: dict[str, dict[str, float]],
          columns: list[Column], compared: dict[str, float], compare_columns: list[Column]) -> str:
    """A markdown table, a line per model; `compared` (the model against compare_to) fills the model's line of the
    columns in `compare_columns` that it has."""
    extra = [c for c in compare_columns if c[1] in compared]
    rows = ["| model | path | " + " | ".join(h for h, _, _ in columns + extra) + " |",
            "|---|---|" + "---:|" * len(columns + extra)]
    for label, name, path, _ in models:
        values = {**results[label], **(compared if label == "model" else {})}
        cells = " | ".join(format(values[key], fmt) if key in values else "-" for _, key, fmt in columns + extra)
        rows.append(f"| {label} | {path or name} | {cells} |")
    return "\n".join(rows)


def kl_histogram(kl: np.ndarray) -> Any | None:
    """Per-token KL(P_ref || P_model) on log bins, its mean and p99 marked; None when no token differs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = kl.astype(np.float64)
    positive = values[values > 0]
    if not len(positive):
        return None
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    FigureCanvasAgg(fig)  # Agg canvas on the figure itself: no pyplot, no global backend switch
    ax = fig.add_subplot()
    low, high = positive.min(), positive.max()
    ax.hist(positive, bins=np.geomspace(low, high * (1 + 1e-9), 60) if high > low else 1, color="tab:blue")
    ax.set_xscale("log")
    for value, label, style in ((values.mean(), "mean", "-"), (np.quantile(values, 0.99), "p99", "--")):
        if value > 0:
            ax.axvline(value, color="tab:red", linestyle=style, label=f"{label} {value:.3g}")
    ax.set_xlabel("KL(P_compare_to || P_model) per token (nats)")
    ax.set_ylabel("tokens")
    ax.set_title(f"Per-token KL over {len(kl)} tokens ({len(kl) - len(positive)} exactly 0)")
    ax.legend()
    return fig
