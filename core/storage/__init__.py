"""Storage paths: local paths now; every caller goes through here so remote schemes plug in once."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from core.errors import ConfigError


def resolve_local(uri: str) -> Path:
    """An absolute local path: workers run in another cwd, so relative paths are fixed here."""
    return Path(uri).expanduser().resolve()


def local_path(uri: str, field: str) -> Path:
    """A readable local path for `uri`, or a ConfigError naming the field."""
    path = resolve_local(uri)
    if not path.exists():
        raise ConfigError(field, f"{uri}: no such file or directory")
    return path


def staging_dir(final: Path) -> Path:
    """A fresh sibling directory to write into before `publish_dir` makes it final."""
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(staged: Path, final: Path) -> Path:
    """Atomically make `staged` visible as `final` (rename on one filesystem)."""
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, final)
    return final
