"""The report adds up: effective bits recomputed from each file's own rows equals its headline."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from jobs.sensitivity.report import (
    headline_effective_bits,
    recompute_effective_bits,
    report_rows,
    sensitivity_of,
    write_report,
)
from jobs.sensitivity.search import Handle, SearchResult, make_handle, search

CANDIDATES = ("w4g128", "w4a8g128", "w8", "fp16")
HEADER = {"scheme": "gradient (Fisher) score", "candidates": list(CANDIDATES), "model": "qwen3_tiny",
          "calibration dataset": "data/text/train.txt", "samples used / max": "16 / 128", "seq len": 64,
          "batch size": 4, "batches": 4, "budget": 4.6}


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Handle], SearchResult, list[Path]]:
    rng = np.random.default_rng(3)
    shapes = [(256, 256), (256, 128), (256, 512), (512, 256)]
    handles = []
    for layer in range(6):
        for k, shape in enumerate(shapes):
            base = float(rng.lognormal(0, 1.5))
            scores = {"w4g128": base, "w4a8g128": base * 1.2, "w8": base * 0.05, "fp16": 0.0}
            handles.append(make_handle(f"layers.{layer}.linear{k}", [shape], scores))
    handles.append(make_handle("layers.6.tied", [(256, 256)], {"w4g128": 1.0, "w4a8g128": 1.0, "w8": 1.0,
                                                               "fp16": 1.0}))
    result = search(handles, HEADER["budget"])
    paths = write_report(tmp_path_factory.mktemp("report"), result, handles, HEADER)
    return handles, result, paths


def test_writes_the_five_files(case) -> None:
    _, _, paths = case
    assert [p.name for p in paths] == ["report.md", "report.json", "report.csv", "sensitivity.png", "bits.png"]
    for png in paths[3:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


@pytest.mark.parametrize("name", ["report.md", "report.json", "report.csv"])
def test_recomputed_effective_bits_equal_the_headline(case, name: str) -> None:
    _, result, paths = case
    path = next(p for p in paths if p.name == name)
    recomputed = recompute_effective_bits(path)
    assert recomputed == pytest.approx(result.effective_bits, abs=1e-9)
    headline_from = path if name != "report.csv" else path.with_name("report.json")  # CSV: rows only
    assert recomputed == pytest.approx(headline_effective_bits(headline_from), abs=1e-9)
    assert result.effective_bits <= HEADER["budget"]


def test_markdown_header_and_table(case) -> None:
    handles, result, paths = case
    text = paths[0].read_text()
    for key in HEADER:
        assert f"**{key}:**" in text
    assert f"{result.total_bits} bits / {result.total_elements} elements" in text
    assert "constraint satisfied: yes" in text and "exact (Pareto dynamic program)" in text
    assert "16-bit" in text or "*16" in text  # the cost formula is stated
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0] == "| Layer | Elements | Num Bits | Score | Sensitivity | Size Cost (bits) |"
    layers = [line.split("|")[1].strip() for line in table[1:]]
    assert sorted(layers) == sorted(h.name for h in handles)


def test_table_sorted_by_sensitivity(case) -> None:
    handles, result, paths = case
    by_name = {h.name: h for h in handles}
    rows = report_rows(result, handles)
    sens = [r["sensitivity"] for r in rows]
    assert sens == sorted(sens, reverse=True)
    for r in rows:  # sensitivity = the score of the lowest-bit candidate (w4g128 ties w4a8g128: first listed)
        assert r["sensitivity_format"] == "w4g128" and r["sensitivity"] == by_name[r["layer"]].scores["w4g128"]
        assert r["size_cost_bits"] == by_name[r["layer"]].bits[r["format"]]
    with paths[2].open(newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["layer"] for r in csv_rows] == [r["layer"] for r in rows]
    assert [float(r["sensitivity"]) for r in csv_rows] == sens  # floats round-trip exactly
    md_layers = [line.split("|")[1].strip() for line in paths[0].read_text().splitlines()[-len(rows):]]
    assert md_layers == [r["layer"] for r in rows]


def test_manifest_has_everything(case) -> None:
    handles, result, paths = case
    manifest = json.loads(paths[1].read_text())
    assert manifest["header"]["model"] == "qwen3_tiny" and manifest["choices"] == result.choices
    search_part = manifest["search"]
    assert search_part["total_bits"] == result.total_bits and search_part["feasible"] is True
    assert search_part["total_score"] == result.total_score and search_part["gap_bound"] == 0.0
    assert [h["name"] for h in manifest["handles"]] == [h.name for h in handles]
    for entry, h in zip(manifest["handles"], handles, strict=True):
        assert entry["choice"] == result.choices[h.name]
        assert entry["candidates"] == {f: {"score": h.scores[f], "bits": h.bits[f]} for f in CANDIDATES}


def test_sensitivity_of_takes_the_lowest_bits() -> None:
    h = Handle("x", 10, {"fp16": 0.0, "w8": 0.5, "w4": 3.0}, {"fp16": 160, "w8": 90, "w4": 50})
    assert sensitivity_of(h) == ("w4", 3.0)
