"""A sweep's summary table: one row per job (its swept values, status, wall time, MLflow run) and the numbers of
the jobs' own summaries (final_loss, last_block_rel_err, effective_bits, ...) that the jobs report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_METRICS = 6  # the table stays readable in a terminal; every number is in each job's MLflow run


@dataclass
class Row:
    index: int
    name: str
    swept: dict[str, str]
    status: str = "NOT STARTED"  # FINISHED | FAILED | KILLED | NOT STARTED (a signal came first)
    seconds: float | None = None
    run_id: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def _number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def metric_keys(rows: list[Row]) -> list[str]:
    """The summary numbers to show: those most jobs report, in the order the first reports them."""
    counts: dict[str, int] = {}
    for row in rows:
        for key, value in row.summary.items():
            if _number(value) is not None:
                counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts, key=lambda k: -counts[k])  # stable: ties keep the first job's order
    return ranked[:MAX_METRICS]


def table(rows: list[Row]) -> str:
    """Plain aligned columns (a terminal, a log, an MLflow text artifact alike)."""
    swept = list(dict.fromkeys(key for row in rows for key in row.swept))
    metrics = metric_keys(rows)
    header = ["#", "job", *swept, "status", "time", "run", *metrics]
    body = []
    for row in rows:
        time = f"{row.seconds:.1f}s" if row.seconds is not None else "-"
        cells = [str(row.index), row.name, *(row.swept.get(k, "") for k in swept), row.status, time,
                 row.run_id[:12] or "-", *(_number(row.summary.get(k)) or "-" for k in metrics)]
        body.append(cells)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
             for line in [header, *body]]
    errors = [f"  [{row.index}] {row.error}" for row in rows if row.error]
    return "\n".join(lines + (["errors:", *errors] if errors else [])) + "\n"


def records(rows: list[Row]) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts (log.format=json's result event, the parent run's sweep/summary.json)."""
    return [{"index": r.index, "job": r.name, **r.swept, "status": r.status, "seconds": r.seconds,
             "run_id": r.run_id, "summary": r.summary, **({"error": r.error} if r.error else {})} for r in rows]
