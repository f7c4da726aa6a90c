"""docker/Dockerfile: hadolint-clean, and installs exactly pyproject.toml's pins (parsed from both files)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.IGNORECASE)
TOOLING = {"pip"}  # installed by the Dockerfile but not project dependencies
OPTS_WITH_VALUE = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--target", "--prefix"}
FILE_OPTS = {"-r", "--requirement", "-c", "--constraint", "-e", "--editable"}
FORBIDDEN_OPTS = {"--no-deps", "-U", "--upgrade", *FILE_OPTS}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
            buf = ""
    return out


def pip_installs(text: str) -> list[list[str]]:
    """The argument lists of every `pip install` in RUN lines, ARG defaults expanded."""
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.MULTILINE))
    runs = []
    for instr, rest in instructions(text):
        if instr != "RUN":
            continue
        rest = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), rest)
        lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        cmds, words = [], []
        for token in [*lexer, ";"]:
            if token in ("&&", "||", ";", "|"):
                cmds, words = [*cmds, words], []
            else:
                words.append(token)
        for words in cmds:
            if words[:3] in (["python", "-m", "pip"], ["python3.11", "-m", "pip"]):
                words = words[2:]
            if words[:2] == ["pip", "install"]:
                runs.append(words[2:])
    return runs


def pin_violations(dockerfile_text: str, pyproject: dict) -> list[str]:
    deps = {Requirement(d).name.lower(): Requirement(d) for d in pyproject["project"]["dependencies"]}
    errors, project_installed, pinned = [], False, set()
    if re.search(r"\bpip\s+uninstall\b", dockerfile_text):
        errors.append("pip uninstall removes what pyproject pinned")
    for words in pip_installs(dockerfile_text):
        skip = False
        for word in words:
            if skip:
                skip = False
            elif word in FORBIDDEN_OPTS or word.startswith(("--requirement=", "--constraint=")):
                errors.append(f"pip install {word} can bypass pyproject's pins")
                skip = word in FILE_OPTS
            elif word in OPTS_WITH_VALUE:
                skip = True
            elif word.startswith("-"):
                continue
            elif word in (".", "/app", "./"):
                project_installed = True
            else:
                req = Requirement(word)
                name, specs = req.name.lower(), list(req.specifier)
                pinned.add(name)
                if len(specs) != 1 or specs[0].operator != "==":
                    errors.append(f"{word}: the Dockerfile must pin with ==")
                elif name in deps:
                    if not deps[name].specifier.contains(specs[0].version, prereleases=True):
                        errors.append(f"{word} is outside pyproject's {deps[name]}")
                    pyproject_pins = {s.version for s in deps[name].specifier if s.operator == "=="}
                    if pyproject_pins and pyproject_pins != {specs[0].version}:
                        errors.append(f"{word} overrides pyproject's {deps[name]}")
                elif name not in TOOLING:
                    errors.append(f"{word} is not a pyproject dependency")
    if not project_installed:
        errors.append("the project itself (`pip install .`) is never installed")
    for name, req in deps.items():
        if not any(s.operator == "==" for s in req.specifier) and name not in pinned:
            errors.append(f"{req}: a range in pyproject, so the Dockerfile must pin it")
    return errors


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    assert found, f"{name} missing: pip install -e '.[test]'"
    return found


def hadolint(path: Path, tmp_path: Path) -> list[dict]:
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")  # ignore any user/global config
    cmd = [_tool("hadolint"), "-c", str(config), "--disable-ignore-pragma", "-t", "style", "-f", "json"]
    out = subprocess.run([*cmd, str(path)], capture_output=True, text=True, timeout=60)
    findings = json.loads(out.stdout or "[]")
    assert (out.returncode != 0) == bool(findings), out.stderr
    return findings


@pytest.fixture(scope="module")
def text() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_hadolint_clean(tmp_path):
    assert hadolint(DOCKERFILE, tmp_path) == []


def test_hadolint_can_fail(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install -y curl\nRUN pip install requests\n")
    assert {"DL3007", "DL3008", "DL3013"} <= {f["code"] for f in hadolint(bad, tmp_path)}


def test_installs_exactly_the_pyproject_pins(text, pyproject):
    assert pin_violations(text, pyproject) == []


@pytest.mark.parametrize(
    "line, problem",
    [
        ("RUN pip install --no-cache-dir transformers==5.0.0 .", "overrides"),
        ("RUN pip install --no-cache-dir torch==2.10.0 .", "outside"),
        ("RUN pip install --no-cache-dir torch .", "must pin"),
        ("RUN pip install --no-cache-dir --no-deps .", "bypass"),
        ("RUN pip install --no-cache-dir -c /tmp/constraints.txt .", "bypass"),
        ("RUN pip install --no-cache-dir torch==2.13.0 numpy==2.0.0 .", "not a pyproject dependency"),
        ("RUN pip install --no-cache-dir torch==2.13.0", "never installed"),
        ("RUN pip install --no-cache-dir . && pip uninstall -y boto3", "uninstall"),
        ("RUN pip install --no-cache-dir .", "must pin it"),
    ],
)
def test_pin_check_can_fail(line, problem, pyproject):
    errors = pin_violations(f"FROM base:1\n{line}\n", pyproject)
    assert any(problem in e for e in errors), errors


def test_base_image_and_python(text):
    bases = [rest for instr, rest in instructions(text) if instr == "FROM"]
    assert len(bases) == 1
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.\d\d", bases[0]), bases
    assert re.search(r"\bpython3\.11=3\.11\.", text) and "python3.11 -m venv" in text


def test_runtime_user_workdir_entrypoint(text):
    steps = instructions(text)
    users = [rest for instr, rest in steps if instr == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [rest for instr, rest in steps if instr == "WORKDIR"][-1] == "/app"
    assert json.loads([rest for instr, rest in steps if instr == "ENTRYPOINT"][-1]) == [
        "python",
        "-m",
        "orchestrator",
    ]


def test_no_secrets_baked_in(text):
    for instr, rest in instructions(text):
        if instr in ("ENV", "ARG"):
            names = re.findall(r"(?:^|\s)(\w+)=", rest) or [rest.split("=")[0]]
            assert not any(SECRET_NAME.search(n) for n in names), rest
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "**/.env"} <= set(ignored)


def test_matplotlib_font_cache_is_built_into_the_image(text):
    """A fresh pod must not spend its first plot building the font cache: built at image build time, in the
    directory the runtime points matplotlib at, owned by the runtime user."""
    steps = instructions(text)
    env = " ".join(rest for instr, rest in steps if instr == "ENV")
    cache = re.search(r"\bMPLCONFIGDIR=(\S+)", env).group(1)
    runs = " ".join(rest for instr, rest in steps if instr == "RUN")
    assert f'MPLCONFIGDIR={cache} python -c "import matplotlib.font_manager"' in runs
    assert f"chown -R app:app {cache}" in runs
