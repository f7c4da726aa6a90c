"""The sensitivity report: report.md, report.json (the machine-readable manifest), report.csv (the table) and
two plots, all from one list of rows so they agree with each other.

Sensitivity of a handle = the score of its lowest-bit candidate (ties: the first candidate listed), i.e.
how much the most aggressive format hurts it. Score = the score of the chosen format. Size Cost = the bits
of the chosen format (`search.format_bits`). The headline effective bits is sum(Size Cost) / sum(Elements)
over the table's rows, and `recompute_effective_bits` checks exactly that from any of the three files.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jobs.sensitivity.search import Handle, SearchResult

COLUMNS = ("layer", "elements", "format", "num_bits", "score", "sensitivity", "sensitivity_format",
           "size_cost_bits")
SENSITIVITY_DEFINITION = "score of the handle's lowest-bit candidate (ties: the first candidate listed)"
_HEADLINE = re.compile(r"\*\*Effective bits:\*\* .* = (\S+)$", re.MULTILINE)


def sensitivity_of(handle: Handle) -> tuple[str, float]:
    """(format, score) of the handle's lowest-bit candidate; min() keeps the first of equal bits."""
    fmt = min(handle.candidates, key=lambda f: handle.bits[f])
    return fmt, float(handle.scores[fmt])


def report_rows(result: SearchResult, handles: Sequence[Handle]) -> list[dict[str, Any]]:
    """One row per handle, most sensitive first (ties keep the handles' order)."""
    rows = []
    for h in handles:
        fmt = result.choices[h.name]
        sens_fmt, sens = sensitivity_of(h)
        rows.append({"layer": h.name, "elements": h.elements, "format": fmt, "num_bits": h.bits[fmt] / h.elements,
                     "score": float(h.scores[fmt]), "sensitivity": sens, "sensitivity_format": sens_fmt,
                     "size_cost_bits": int(h.bits[fmt])})
    return sorted(rows, key=lambda r: -r["sensitivity"])


def write_report(out_dir: str | Path, result: SearchResult, handles: Sequence[Handle],
                 header: Mapping[str, Any]) -> list[Path]:
    """Write report.md/.json/.csv and sensitivity.png/bits.png under `out_dir`; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = report_rows(result, handles)
    paths = [out / "report.md", out / "report.json", out / "report.csv", out / "sensitivity.png", out / "bits.png"]
    paths[0].write_text(_markdown(result, rows, header))
    paths[1].write_text(json.dumps(_manifest(result, handles, rows, header), indent=2, default=str) + "\n")
    _write_csv(paths[2], rows)
    _plot_sensitivity(paths[3], handles)
    _plot_bits(paths[4], result, handles)
    return paths


def recompute_effective_bits(path: str | Path) -> float:
    """sum(Size Cost) / sum(Elements) over the rows of a report.md, report.json or report.csv."""
    path = Path(path)
    if path.suffix == ".json":
        rows = json.loads(path.read_text())["rows"]
        pairs = [(r["size_cost_bits"], r["elements"]) for r in rows]
    elif path.suffix == ".csv":
        with path.open(newline="") as f:
            pairs = [(int(r["size_cost_bits"]), int(r["elements"])) for r in csv.DictReader(f)]
    else:
        pairs = [(int(c[-1]), int(c[1])) for c in _md_table(path.read_text())]
    return sum(b for b, _ in pairs) / sum(e for _, e in pairs)


def headline_effective_bits(path: str | Path) -> float:
    """The effective bits a report.md or report.json states as its headline."""
    path = Path(path)
    if path.suffix == ".json":
        return float(json.loads(path.read_text())["search"]["effective_bits"])
    match = _HEADLINE.search(path.read_text())
    if match is None:
        raise ValueError(f"{path}: no effective-bits headline")
    return float(match.group(1))


def _markdown(result: SearchResult, rows: list[dict[str, Any]], header: Mapping[str, Any]) -> str:
    search = "exact (Pareto dynamic program)" if result.exact else (
        f"frontier capped by epsilon-dominance merges; score is at most {result.gap_bound:.6g} above the optimum")
    lines = ["# Quantization sensitivity and mixed-precision search", ""]
    lines += [f"- **{key}:** {_cell(value)}" for key, value in header.items() if key != "excluded"]
    lines += _excluded(header.get("excluded", {}))
    lines += [
        f"- **Effective bits:** {result.effective_bits:.4f} = {result.total_bits} bits / "
        f"{result.total_elements} elements (the sums of the table's Size Cost and Elements) = "
        f"{result.effective_bits!r}",
        f"- **Budget:** {result.budget:g} bits; constraint satisfied: {'yes' if result.feasible else 'no'}",
        f"- **Total score:** {result.total_score:.6g} (sum of the chosen formats' scores; lower is better)",
        f"- **Search:** {search}",
        f"- **Cost formula:** {result.cost_formula}",
        f"- **Sensitivity:** {SENSITIVITY_DEFINITION}; **Score:** the chosen format's score",
        "",
        "| Layer | Elements | Num Bits | Score | Sensitivity | Size Cost (bits) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    lines += [f"| {r['layer']} | {r['elements']} | {r['format']} ({r['num_bits']:.4f}) | {r['score']:.4g} | "
              f"{r['sensitivity']:.4g} ({r['sensitivity_format']}) | {r['size_cost_bits']} |" for r in rows]
    return "\n".join(lines) + "\n"


def by_reason(excluded: Mapping[str, str]) -> dict[str, list[str]]:
    """Linears not scored, grouped by why (a VLM's vision tower alone has dozens)."""
    groups: dict[str, list[str]] = {}
    for name, reason in excluded.items():
        groups.setdefault(reason, []).append(name)
    return groups


def _excluded(excluded: Mapping[str, str]) -> list[str]:
    return [f"- **excluded ({reason}), {len(names)}:** {', '.join(names)}"
            for reason, names in by_reason(excluded).items()]


def _md_table(text: str) -> list[list[str]]:
    """The cells of the table's data rows (after the |---| separator)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def _manifest(result: SearchResult, handles: Sequence[Handle], rows: list[dict[str, Any]],
              header: Mapping[str, Any]) -> dict[str, Any]:
    search = {k: v for k, v in asdict(result).items() if k != "choices"}
    return {
        "header": dict(header),
        "search": search,
        "sensitivity_definition": SENSITIVITY_DEFINITION,
        "choices": dict(result.choices),
        "rows": rows,
        "handles": [{"name": h.name, "elements": h.elements, "choice": result.choices[h.name],
                     "candidates": {f: {"score": float(h.scores[f]), "bits": int(h.bits[f])} for f in h.candidates}}
                    for h in handles],
    }


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)  # str(float) round-trips exactly


def _figure(n: int) -> tuple[Figure, Any]:
    fig = Figure(figsize=(min(40.0, max(8.0, 0.15 * n)), 4.5), layout="constrained")
    FigureCanvasAgg(fig)  # Agg canvas on the figure itself: no pyplot, no global backend switch
    return fig, fig.add_subplot()


def _label_layers(ax: Any, names: list[str]) -> None:
    if len(names) <= 80:  # beyond that the names overlap into a black band; the index is more useful
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_xlabel("handle (model order)")


def _plot_sensitivity(path: Path, handles: Sequence[Handle]) -> None:
    fig, ax = _figure(len(handles))
    values = [sensitivity_of(h)[1] for h in handles]
    ax.bar(range(len(handles)), values, color="tab:red")
    if all(v > 0 for v in values):
        ax.set_yscale("log")  # scores span orders of magnitude across layers
    ax.set_ylabel("sensitivity (score of the lowest-bit candidate)")
    ax.set_title("Per-layer quantization sensitivity")
    _label_layers(ax, [h.name for h in handles])
    fig.savefig(path, format="png", dpi=100)


def _plot_bits(path: Path, result: SearchResult, handles: Sequence[Handle]) -> None:
    fig, ax = _figure(len(handles))
    chosen = [result.choices[h.name] for h in handles]
    colors = {f: f"C{i}" for i, f in enumerate(dict.fromkeys(chosen))}
    for fmt, color in colors.items():
        xs = [i for i, c in enumerate(chosen) if c == fmt]
        ax.bar(xs, [handles[i].bits[fmt] / handles[i].elements for i in xs], color=color, label=fmt)
    ax.axhline(result.budget, color="black", linestyle="--", label=f"budget {result.budget:g}")
    ax.axhline(result.effective_bits, color="gray", linestyle=":", label=f"effective {result.effective_bits:.3f}")
    ax.set_ylabel("bits per weight (chosen format, with scales)")
    ax.set_title("Chosen bits per layer")
    ax.legend(fontsize=7)
    _label_layers(ax, [h.name for h in handles])
    fig.savefig(path, format="png", dpi=100)


def _cell(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)
