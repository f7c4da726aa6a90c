"""The layer contract (tools/import_contract.py) holds on the tree, and it catches planted violations."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "import_contract.py"
PACKAGES = ("orchestrator", "jobs", "core", "kernels")
KIND = "a job kind never imports another job kind"
_spec = importlib.util.spec_from_file_location("import_contract", TOOL)
contract = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(contract)


def run(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), str(root)], capture_output=True, text=True, timeout=60)


def copy_tree(dest: Path) -> None:
    """Only the .py files of the four packages."""
    def not_python(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n == "__pycache__" or (Path(folder, n).is_file() and not n.endswith(".py"))]

    for package in PACKAGES:
        shutil.copytree(REPO / package, dest / package, ignore=not_python)


def plant(root: Path, where: str, line: str) -> None:
    """Append `line` to a file of the copy; an indented line goes inside a function (lazy imports count)."""
    target = root / where
    body = f"\n\ndef _planted():\n{line}\n" if line.startswith("    ") else f"\n{line}\n"
    target.write_text(target.read_text() + body)


def test_the_tree_keeps_the_contract() -> None:
    result = run(REPO)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("where,line,expected", [
    ("jobs/quantize/driver.py", "from jobs.sensitivity import search  # planted",
     f"jobs.quantize.driver imports jobs.sensitivity.search ({KIND})"),
    ("core/models/build.py", "import jobs.sft  # planted",
     "core.models.build imports jobs.sft (core never imports jobs)"),
])
def test_a_planted_violation_fails(tmp_path: Path, where: str, line: str, expected: str) -> None:
    """Mutation check: one line added to a copy of the tree turns the tool red (exit 1) with one line naming the
    file, the import and the rule."""
    copy_tree(tmp_path)
    plant(tmp_path, where, line)
    result = run(tmp_path)
    assert result.returncode == 1 and expected in result.stdout, result.stdout
    assert result.stdout.startswith(where) and len(result.stdout.splitlines()) == 1, result.stdout


# every form an import takes: lazy, relative, from the package, literal import_module, "module:attr" strings
# (by path, or a registry's entry); one copy of the tree for all (a full check each would take the test past 5 s)
FORMS = [
    ("jobs/quantize/blockloop.py", "    from jobs.sensitivity import search",
     f"jobs.quantize.blockloop imports jobs.sensitivity.search ({KIND})"),
    ("jobs/quantize/activations.py", "    from ..sensitivity import scoring",
     f"jobs.quantize.activations imports jobs.sensitivity.scoring ({KIND})"),
    ("jobs/evaluate/driver.py", "    from jobs import sft",
     f"jobs.evaluate.driver imports jobs.sft ({KIND})"),
    ("jobs/quantize/worker.py", '    importlib.import_module("jobs.evaluate.perplexity")',
     f"jobs.quantize.worker imports jobs.evaluate.perplexity ({KIND})"),
    ("jobs/quantize/driver.py", 'WORKER = "jobs.sensitivity.worker:ScoringWorker"',
     f"jobs.quantize.driver imports jobs.sensitivity.worker ({KIND})"),
    ("core/models/registry.py", 'MODELS.register("x", "orchestrator.cli:main")',
     "core.models.registry imports orchestrator.cli (only orchestrator imports orchestrator)"),
    ("kernels/quant/formats.py", "    from core import errors, models",
     "kernels.quant.formats imports core.models (kernels use only core.errors, core.registry of core)"),
    ("kernels/fused/ops.py", "    import jobs.base",
     "kernels.fused.ops imports jobs.base (kernels never import jobs)"),
]


def test_every_form_of_import_is_caught(tmp_path: Path) -> None:
    copy_tree(tmp_path)
    for where, line, _ in FORMS:
        plant(tmp_path, where, line)
    found = contract.check(tmp_path)
    for where, _, expected in FORMS:
        assert any(v.startswith(where + ":") and v.endswith(expected) for v in found), (expected, found)
    assert len(found) == len(FORMS), found


def test_what_the_contract_allows_stays_green(tmp_path: Path) -> None:
    """The shared jobs modules, kernels' two core leaves and a kind's own modules pass in every form."""
    copy_tree(tmp_path)
    plant(tmp_path, "kernels/quant/formats.py", "    from core import errors, registry")
    plant(tmp_path, "jobs/registry.py", 'JOBS.register("x", "jobs.sensitivity.worker:ScoringWorker")')
    plant(tmp_path, "jobs/sft/worker.py", "    from jobs import base, registry")
    plant(tmp_path, "jobs/quantize/driver.py", "    from . import blockloop")
    plant(tmp_path, "orchestrator/cli.py", "    import jobs.sft.driver")
    assert contract.check(tmp_path) == []
