"""core/redact.py's streams: what reaches stdout/stderr by any path (tracebacks, warnings, progress bars) is
redacted, not only log records."""

from __future__ import annotations

import io
import subprocess
import sys
import traceback
from pathlib import Path

from core.redact import RedactingStream, Redactor, redact_std_streams

SECRET = "tok-5f0c9e1d77aa"


def test_tracebacks_warnings_and_progress_bars_are_redacted(monkeypatch) -> None:
    from tqdm import tqdm

    monkeypatch.setenv("MY_API_TOKEN", SECRET)  # a secret-looking name: its value is a literal to mask
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    redact_std_streams(Redactor())
    import sys

    try:
        raise FileNotFoundError(f"/data/{SECRET}/train.jsonl")
    except FileNotFoundError as exc:
        traceback.print_exception(exc)
    for _ in tqdm(range(3), desc=f"tokenize {SECRET}.jsonl", file=sys.stderr):
        pass
    print("http://user:hunter2pass@mlflow:5000 and AKIAABCDEFGHIJKLMNOP")
    sys.stdout.flush()
    assert SECRET not in err.getvalue() + out.getvalue()
    assert "FileNotFoundError: /data/***/train.jsonl" in err.getvalue()
    assert "tokenize ***.jsonl" in err.getvalue()
    assert out.getvalue() == "http://***@mlflow:5000 and ***\n"


def test_wrapping_again_replaces_the_redactor_instead_of_stacking() -> None:
    inner = io.StringIO()
    stream = RedactingStream(RedactingStream(inner, Redactor()), Redactor(value_patterns=["zebra"]))
    assert stream.stream is inner
    stream.write("a zebra")
    assert inner.getvalue() == "a ***"


def test_warnings_are_redacted() -> None:
    """In a fresh interpreter: pytest records warnings itself, which would bypass the stream under test."""
    code = ("import warnings; from core.redact import Redactor, redact_std_streams\n"
            "redact_std_streams(Redactor())\n"
            f"warnings.warn('reading /data/{SECRET}/x')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2], env={"MY_API_TOKEN": SECRET, "PATH": ""})
    assert "UserWarning: reading /data/***/x" in proc.stderr and SECRET not in proc.stderr, proc.stderr
