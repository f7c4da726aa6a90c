"""Storage locations: a local path or an `s3://bucket/prefix` URI, behind one small interface.

Every caller goes through these functions; the scheme picks a backend from `BACKENDS` (local.py, s3.py),
so callers never branch on schemes. Outputs are directories published atomically:

    staged = staging_dir(final)      a local directory named like `final` to write into
    publish_dir(staged, final)       push (local: nothing to do; S3: upload under a temporary prefix),
                                     then commit: final keys in place, the `COMPLETE` marker last
Readers of outputs (resume, exports) count a directory only once `is_published` sees its marker.
Several writers of one directory (SFT ranks) share a `token`: each calls `push`, then one calls `commit`.
"""

from __future__ import annotations

import os
import uuid
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, TypeVar

from core.errors import ConfigError
from core.registry import Registry

MARKER = "COMPLETE"  # written last by commit; a directory without it is not (yet) an output
TMP_PREFIX = ".tmp-"  # staging/temporary names: .tmp-<token>/<name>, never listed as outputs
P = TypeVar("P", str, Path)


class Backend(Protocol):
    def absolute(self, uri: str) -> str: ...
    def scratch_dir(self, uri: str) -> Path: ...  # local working directory for a storage location
    def fetch(self, uri: str) -> Path | None: ...  # readable local file/dir (S3: cached download)
    def pending(self, uri: str) -> bool: ...  # an unfinished (or crashed) publish of `uri` exists
    def staging_dir(self, final: str, token: str) -> Path: ...
    def push(self, staged: Path, final: str, token: str) -> None: ...
    def commit(self, final: str, token: str) -> None: ...
    def is_published(self, uri: str) -> bool: ...
    def children(self, uri: str) -> list[str]: ...  # names of the sub-directories, temporaries excluded
    def remove(self, uri: str) -> None: ...  # marker first, so a half-removed directory never counts
    def read_text(self, uri: str) -> str | None: ...
    def write_text(self, uri: str, text: str) -> None: ...
    def lock(self, uri: str, holder: str) -> AbstractContextManager[None]: ...  # one holder per job dir (lease.py)


BACKENDS: Registry[Backend] = Registry("storage scheme", "storage")
BACKENDS.register("file", "core.storage.local:LOCAL")
BACKENDS.register("s3", "core.storage.s3:S3")


def scheme(uri: str | Path) -> str:
    text = str(uri)
    return text.split("://", 1)[0] if "://" in text else "file"


def backend(uri: str | Path) -> Backend:
    return BACKENDS.get(scheme(uri))


def cache_root() -> Path:
    """Downloads and S3 jobs' local scratch: $ORCHESTRATOR_CACHE, else ~/.cache/orchestrator."""
    return Path(os.environ.get("ORCHESTRATOR_CACHE") or Path.home() / ".cache" / "orchestrator").expanduser()


def join(uri: P, *parts: str) -> P:
    if isinstance(uri, Path):
        return uri.joinpath(*parts)
    return "/".join([uri.rstrip("/"), *parts])


def absolute(uri: str | Path) -> str:
    """Local paths made absolute (workers run in another cwd); URIs unchanged."""
    return backend(uri).absolute(str(uri))


def resolve_local(uri: str | Path) -> Path:
    """An absolute local path (local storage only)."""
    return Path(uri).expanduser().resolve()


def scratch_dir(uri: str | Path) -> Path:
    return backend(uri).scratch_dir(absolute(uri))


def local_path(uri: str | Path, field: str) -> Path:
    """A readable local copy of `uri` (file or directory), or a ConfigError naming the field."""
    store, text = backend(uri), absolute(uri)
    if store.pending(text) and not store.is_published(text):
        raise ConfigError(field, f"{uri}: an unfinished upload (no {MARKER} marker yet, or it crashed)")
    path = store.fetch(text)
    if path is None:
        raise ConfigError(field, f"{uri}: no such file or directory")
    return path


def staging_dir(final: str | Path, token: str | None = None) -> Path:
    """A fresh local directory named like `final` to write into before `publish_dir` makes it final;
    writers passing the same `token` share it where the storage itself is local."""
    return backend(final).staging_dir(absolute(final), token or uuid.uuid4().hex[:12])


def token_of(staged: Path) -> str:
    return staged.parent.name.removeprefix(TMP_PREFIX).split("-")[0]


def push(staged: Path, final: str | Path, token: str) -> None:
    """This writer's files of `final` to the shared temporary location (S3: upload; local: in place)."""
    backend(final).push(staged, absolute(final), token)


def commit(final: str | Path, token: str) -> str:
    """After every writer pushed: make `final` visible, marker last; returns its absolute URI."""
    text = absolute(final)
    backend(text).commit(text, token)
    return text


def publish_dir(staged: Path, final: str | Path) -> str:
    """Atomically make `staged` visible as `final` (one writer); returns the absolute URI."""
    push(staged, final, token_of(staged))
    return commit(final, token_of(staged))


def is_published(uri: str | Path) -> bool:
    return backend(uri).is_published(absolute(uri))


def published_children(uri: str | Path, pattern: str = "") -> list[str]:
    """Absolute URIs of the published sub-directories whose names start with `pattern`, sorted."""
    root = absolute(uri)
    names = [n for n in backend(root).children(root) if n.startswith(pattern)]
    return [join(root, n) for n in sorted(names) if is_published(join(root, n))]


def remove(uri: str | Path) -> None:
    backend(uri).remove(absolute(uri))


def read_text(uri: str | Path) -> str | None:
    return backend(uri).read_text(absolute(uri))


def lock(uri: str | Path, holder: str) -> AbstractContextManager[None]:
    """Held while a job runs in `uri`; a second holder gets a ConfigError naming the first (core/storage/lease.py)."""
    return backend(uri).lock(absolute(uri), holder)


def write_text(uri: str | Path, text: str) -> None:
    """One small file, replaced atomically (a single PUT on S3)."""
    backend(uri).write_text(absolute(uri), text)
