"""The layer contract, checked on the source: orchestrator/ -> jobs/<kind>/ -> core/ -> kernels/.

- nothing outside orchestrator/ imports `orchestrator` (tests/, benchmarks/ and tools/ excepted: not checked);
- a job kind (jobs/<kind>/) never imports another job kind; jobs/base.py and jobs/registry.py serve every kind;
- core/ never imports `jobs` or `orchestrator`;
- kernels/ imports no `jobs`, no `orchestrator`, and of core only its two leaves `core.errors` and `core.registry`.

Every import counts: module level or inside a function (the code imports lazily), `import x`, `from x import y`
(`y` too when it is a submodule: `from jobs import sft` imports jobs.sft), relative imports, and
`importlib.import_module("x")` with a literal name; so do the "module:attr" strings resolved later, by registries
(`Registry.register("name", "core.models.tiny:X")`) or by path (`core.cluster.remote_actor("jobs.x.worker:W")`):
any string literal that is exactly `<package>.<module>:<attr>` of these four packages.

    python tools/import_contract.py [ROOT]     # one line per violation, exit 1 if any
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGES = ("orchestrator", "jobs", "core", "kernels")
KERNELS_MAY_USE = ("core.errors", "core.registry")
SHARED_JOBS = ("jobs.base", "jobs.registry")
EXCEPTED = ("tests", "benchmarks", "tools")  # may import anything; not checked
BY_PATH = re.compile(rf"((?:{'|'.join(PACKAGES)})(?:\.\w+)*):\w+(?:\.\w+)*")
_IMPORT_FUNCTIONS = ("import_module", "__import__")


def _is_module(root: Path, dotted: str) -> bool:
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or path.is_dir()


def imports(path: Path, importer: str, root: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import, literal import_module and "module:attr" string in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package[:len(package) - node.level + 1] if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names if base and a.name != "*"]
            subs = [sub for sub in subs if _is_module(root, sub)]
            if base and len(subs) < len(node.names):  # some name is the package's own (or *): it is imported
                yield node.lineno, base
            yield from ((node.lineno, sub) for sub in subs)  # `from core import errors` = `import core.errors`
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in _IMPORT_FUNCTIONS):
            yield node.lineno, node.args[0].value
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = BY_PATH.fullmatch(node.value)
            if match:
                yield node.lineno, match.group(1)


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _job_kind(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "jobs" or len(parts) < 2 or any(_under(module, shared) for shared in SHARED_JOBS):
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


def sources(root: Path) -> list[Path]:
    """The four packages first, then every other .py of the repository (for the orchestrator rule) outside the
    excepted folders and hidden ones (.venv, .git, caches)."""
    first = [p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))]
    rest = sorted(p for p in root.glob("*.py"))
    for top in sorted(root.iterdir()):
        if top.is_dir() and top.name not in PACKAGES + EXCEPTED and not top.name.startswith("."):
            rest += sorted(top.rglob("*.py"))
    return first + rest


def check(root: Path) -> list[str]:
    found = []
    for path in sources(root):
        rel = path.relative_to(root)
        importer = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        for line, imported in imports(path, importer, root):
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
