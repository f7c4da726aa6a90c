"""bench-sensitivity's table (benchmarks/sensitivity.py): each row's ratio is against the peer of its own pass, so a
first pass (where the peer builds its CUDA extension) is never compared with a second."""

from __future__ import annotations

from benchmarks.sensitivity import table


def _row(name: str, n: int, total: float, scoring: float) -> dict:
    return {"name": name, "gpus": 1, "pass": n, "total": total, "scoring": scoring, "budget": 6.0,
            "effective_bits": 6.0, "chosen": {}}


def _ratios(rows: list[dict]) -> dict[str, tuple[str, str]]:
    """run -> (total vs peer, scoring vs peer) cells of the printed table."""
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table(rows).splitlines()[2:]]
    return {c[0]: (c[9], c[10]) for c in cells}


def test_ratios_pair_each_pass_with_its_own_peer() -> None:
    ratios = _ratios([_row("ours-p1", 1, 40.0, 15.0), _row("peer-p1", 1, 120.0, 90.0),
                      _row("ours-p2", 2, 36.0, 13.0), _row("peer-p2", 2, 60.0, 33.0)])
    assert ratios["ours-p1"] == ("0.33x", "0.17x")  # 40/120, 15/90
    assert ratios["ours-p2"] == ("0.60x", "0.39x")  # 36/60, 13/33: not against the first pass's 120 s
    assert ratios["peer-p1"] == ratios["peer-p2"] == ("", "")


def test_without_a_peer_of_its_pass_a_row_has_no_ratio() -> None:
    ratios = _ratios([_row("ours-p1", 1, 40.0, 15.0), _row("peer-p1", 1, 120.0, 90.0), _row("ours-p2", 2, 36.0, 13.0)])
    assert ratios["ours-p2"] == ("", "")
