"""The layer contract, checked on the source: orchestrator/ -> jobs/<kind>/ -> core/ -> kernels/.

- nothing outside orchestrator/ imports `orchestrator`;
- a job kind (jobs/<kind>/) never imports another job kind; jobs/base.py and jobs/registry.py serve every kind;
- core/ never imports `jobs` or `orchestrator`;
- kernels/ imports no `jobs`, no `orchestrator`, and of core only its two leaves `core.errors` and `core.registry`.

Every import counts: module level or inside a function (the code imports lazily), `import x` and `from x import y`,
and the "module:attr" strings registries resolve later (`Registry.register("name", "core.models.tiny:X")`).

    python -m tools.import_contract [ROOT]     # one line per violation, exit 1 if any
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGES = ("orchestrator", "jobs", "core", "kernels")
KERNELS_MAY_USE = ("core.errors", "core.registry")
SHARED_JOBS = ("jobs.base", "jobs.registry")


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import and registry string target in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register"
              and len(node.args) == 2 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str) and ":" in node.args[1].value):
            yield node.lineno, node.args[1].value.partition(":")[0]


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _job_kind(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "jobs" or len(parts) < 2 or module in SHARED_JOBS:
        return None
    return parts[1]


def violation(importer: str, imported: str) -> str | None:
    """Why `importer` (a dotted module) may not import `imported`, or None."""
    top = importer.split(".")[0]
    if _under(imported, "orchestrator") and top != "orchestrator":
        return "only orchestrator imports orchestrator"
    if top == "jobs":
        mine, theirs = _job_kind(importer), _job_kind(imported)
        if mine and theirs and mine != theirs:
            return "a job kind never imports another job kind"
    if top == "core" and _under(imported, "jobs"):
        return "core never imports jobs"
    if top == "kernels":
        if _under(imported, "jobs"):
            return "kernels never import jobs"
        if _under(imported, "core") and not any(_under(imported, m) for m in KERNELS_MAY_USE):
            return f"kernels use only {', '.join(KERNELS_MAY_USE)} of core"
    return None


def check(root: Path) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            importer = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            for line, imported in imports(path):
                why = violation(importer, imported)
                if why:
                    found.append(f"{rel}:{line}: {importer} imports {imported} ({why})")
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    found = check(root)
    print("\n".join(found) if found else "import contract: no violations")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
