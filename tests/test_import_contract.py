"""The layer contract (tools/import_contract.py) holds on the tree, and it catches a planted violation."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "import_contract.py"


def run(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), str(root)], capture_output=True, text=True, timeout=60)


def test_the_tree_keeps_the_contract() -> None:
    result = run(REPO)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("where,line,expected", [
    ("jobs/quantize/driver.py", "    from jobs.sensitivity import search  # planted",
     "jobs.quantize.driver imports jobs.sensitivity (a job kind never imports another job kind)"),
    ("core/models/build.py", "import jobs.sft  # planted",
     "core.models.build imports jobs.sft (core never imports jobs)"),
    ("kernels/quant/formats.py", "from core.models import MODELS  # planted",
     "kernels.quant.formats imports core.models (kernels use only core.errors, core.registry of core)"),
    ("core/models/registry.py", 'MODELS.register("x", "orchestrator.cli:main")',
     "core.models.registry imports orchestrator.cli (only orchestrator imports orchestrator)"),
])
def test_a_planted_violation_fails(tmp_path: Path, where: str, line: str, expected: str) -> None:
    """Mutation check: one line added to a copy of the tree (inside a function for the job-kind case: lazy imports
    count) turns the check red and names the file, the import and the rule."""
    for package in ("orchestrator", "jobs", "core", "kernels"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.md"))
    target = tmp_path / where
    body = f"\n\ndef _planted():\n{line}\n" if line.startswith("    ") else f"\n{line}\n"
    target.write_text(target.read_text() + body)
    result = run(tmp_path)
    assert result.returncode == 1 and expected in result.stdout, result.stdout
    assert result.stdout.startswith(where), result.stdout
