"""Local (or shared) filesystem: staging next to the final directory, published by one rename."""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import AbstractContextManager
from pathlib import Path

from core.storage import MARKER, TMP_PREFIX
from core.storage.lease import file_lock


def _staged(final: Path, token: str) -> Path:
    return final.parent / f"{TMP_PREFIX}{token}" / final.name


class LocalBackend:
    def absolute(self, uri: str) -> str:
        return str(Path(uri).expanduser().resolve())

    def scratch_dir(self, uri: str) -> Path:
        return Path(uri)

    def fetch(self, uri: str) -> Path | None:
        path = Path(uri)
        # a symlink that resolves nowhere (dangling, a loop) is returned: reading it names the OS's reason
        return path if path.exists() or path.is_symlink() else None

    def pending(self, uri: str) -> bool:
        return False  # publishing is one rename: nothing half-written is ever visible under the final name

    def staging_dir(self, final: str, token: str) -> Path:
        staged = _staged(Path(final), token)
        staged.mkdir(parents=True, exist_ok=True)  # writers sharing the token share it (same filesystem)
        return staged

    def push(self, staged: Path, final: str, token: str) -> None:
        """Nothing to move: the staging directory is already on the final filesystem."""

    def commit(self, final: str, token: str) -> None:
        target = Path(final)
        staged = _staged(target, token)
        (staged / MARKER).write_text("")
        if target.exists():
            old = staged.parent / f"old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(staged, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staged, target)
        shutil.rmtree(staged.parent, ignore_errors=True)  # the emptied .tmp-<token> directory

    def is_published(self, uri: str) -> bool:
        return (Path(uri) / MARKER).is_file()

    def children(self, uri: str) -> list[str]:
        root = Path(uri)
        if not root.is_dir():
            return []
        return [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(TMP_PREFIX)]

    def remove(self, uri: str) -> None:
        (Path(uri) / MARKER).unlink(missing_ok=True)
        shutil.rmtree(uri, ignore_errors=True)

    def read_text(self, uri: str) -> str | None:
        path = Path(uri)
        return path.read_text() if path.is_file() else None

    def write_text(self, uri: str, text: str) -> None:
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")
        tmp.write_text(text)
        os.replace(tmp, path)


    def lock(self, uri: str, holder: str) -> AbstractContextManager[None]:
        return file_lock(Path(uri), holder)


LOCAL = LocalBackend()
