"""`s3://bucket/prefix` through boto3. Endpoint, region and credentials come from the environment only
(AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE), never from the spec.

Publishing a directory: each writer uploads its files under `<parent>/.tmp-<token>/<name>/`; the commit
removes the old marker, copies those keys to `<parent>/<name>/` (server side), deletes stale keys,
writes `<name>/COMPLETE` last and deletes the temporary prefix. A crash at any point leaves no marker.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from core.storage import MARKER, TMP_PREFIX, cache_root
from core.storage.lease import lease

# Deadlines: botocore waits 60 s per read and retries a silent endpoint for minutes by default. A request here
# waits at most CONNECT + READ seconds per attempt, over ATTEMPTS attempts (with botocore's standard backoff).
DEADLINES = {"ORCHESTRATOR_S3_CONNECT_TIMEOUT": 5.0, "ORCHESTRATOR_S3_READ_TIMEOUT": 10.0}
DEFAULT_ATTEMPTS = 3  # botocore's own AWS_MAX_ATTEMPTS / AWS_RETRY_MODE take precedence when set


@functools.cache
def _client_for(aws_env: tuple[tuple[str, str], ...], connect_timeout: float, read_timeout: float) -> Any:
    import boto3
    from botocore.config import Config

    env = dict(aws_env)
    retries = None if "AWS_MAX_ATTEMPTS" in env else {"total_max_attempts": DEFAULT_ATTEMPTS, "mode": "standard"}
    config = Config(connect_timeout=connect_timeout, read_timeout=read_timeout, retries=retries)
    # credentials: botocore's own chain (env, AWS_PROFILE's files, instance roles); None: botocore's defaults
    return boto3.session.Session(profile_name=env.get("AWS_PROFILE")).client(
        "s3", region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"), config=config)


def client() -> Any:
    """One client per AWS environment (endpoint, region, credentials, profile): another env, another client."""
    connect, read = (float(os.environ.get(key, default)) for key, default in DEADLINES.items())
    aws_env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    return _client_for(aws_env, connect, read)


def split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key.strip("/")


def _prefix(key: str) -> str:
    return f"{key}/" if key else ""


def objects(bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def _head(bucket: str, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    if not key:
        return None
    try:
        return client().head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _delete(bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):  # the DeleteObjects limit
        batch = [{"Key": k} for k in keys[start : start + 1000]]
        client().delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})


def _download(bucket: str, key: str, size: int, dest: Path) -> None:
    """Into the cache, atomically: concurrent readers (ranks on one node) never see a partial file."""
    if dest.is_file() and dest.stat().st_size == size:
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    client().download_file(bucket, key, str(part))
    os.replace(part, dest)


@contextlib.contextmanager
def _one_fetcher(view: Path) -> Iterator[None]:
    """One process per node downloads a cached object or directory; the others (a driver and its workers starting
    together) wait, then find the files there. An advisory lock on a file beside the view, released on exit."""
    import fcntl

    view.parent.mkdir(parents=True, exist_ok=True)
    with open(view.with_name(f"{view.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _cache_key(uri: str, listing: list[tuple[str, str, int]]) -> str:
    """A changed object (ETag or size) gives another key, so it is fetched again."""
    return hashlib.sha256(repr((uri, sorted(listing))).encode()).hexdigest()[:24]


def upload_file(local: Path, bucket: str, key: str) -> None:
    client().upload_file(str(local), bucket, key)  # managed transfer: multipart for large files


def _tmp_prefix(final: str, token: str) -> tuple[str, str]:
    bucket, key = split(final)
    parent, _, name = key.rpartition("/")
    return bucket, "/".join(p for p in (parent, f"{TMP_PREFIX}{token}", name) if p) + "/"


class S3Backend:
    def absolute(self, uri: str) -> str:
        return uri.rstrip("/")

    def scratch_dir(self, uri: str) -> Path:
        bucket, key = split(uri)
        return cache_root() / "jobs" / bucket / key

    def fetch(self, uri: str) -> Path | None:
        bucket, key = split(uri)
        head = _head(bucket, key)
        if head is not None:  # one object
            dest = cache_root() / "s3" / _cache_key(uri, [(key, head["ETag"], head["ContentLength"])])
            with _one_fetcher(dest):
                _download(bucket, key, head["ContentLength"], dest / Path(key).name)
            return dest / Path(key).name
        found = [o for o in objects(bucket, _prefix(key)) if not o["Key"].endswith("/")]
        if not found:
            return None
        view = cache_root() / "s3" / _cache_key(uri, [(o["Key"], o["ETag"], o["Size"]) for o in found])
        root = view / (Path(key).name or bucket)
        with _one_fetcher(view):
            for obj in found:
                _download(bucket, obj["Key"], obj["Size"], root / obj["Key"][len(_prefix(key)) :])
        return root

    def pending(self, uri: str) -> bool:
        bucket, key = split(uri)
        parent, _, name = key.rpartition("/")
        listing = client().list_objects_v2(Bucket=bucket, Prefix=_prefix(parent) + TMP_PREFIX, Delimiter="/")
        for tmp in listing.get("CommonPrefixes", []):
            if client().list_objects_v2(Bucket=bucket, Prefix=f"{tmp['Prefix']}{name}/", MaxKeys=1).get("KeyCount"):
                return True
        return False

    def staging_dir(self, final: str, token: str) -> Path:
        # per process: each writer uploads exactly the files it wrote
        staged = self.scratch_dir(final).parent / f"{TMP_PREFIX}{token}-{os.getpid()}" / Path(final).name
        staged.mkdir(parents=True, exist_ok=True)
        return staged

    def push(self, staged: Path, final: str, token: str) -> None:
        bucket, tmp = _tmp_prefix(final, token)
        for path in sorted(p for p in staged.rglob("*") if p.is_file()):
            upload_file(path, bucket, tmp + path.relative_to(staged).as_posix())
        shutil.rmtree(staged.parent, ignore_errors=True)  # uploaded: the local copy is not needed any more

    def commit(self, final: str, token: str) -> None:
        bucket, tmp = _tmp_prefix(final, token)
        _, key = split(final)
        staged = [o["Key"] for o in objects(bucket, tmp)]
        if not staged:
            raise RuntimeError(f"nothing was uploaded for {final} (token {token})")
        marker = f"{key}/{MARKER}"
        client().delete_object(Bucket=bucket, Key=marker)  # from here on, readers ignore the old contents
        new = {f"{key}/{k[len(tmp):]}" for k in staged}
        for src in staged:
            client().copy({"Bucket": bucket, "Key": src}, bucket, f"{key}/{src[len(tmp):]}")
        _delete(bucket, [o["Key"] for o in objects(bucket, f"{key}/") if o["Key"] not in new])
        client().put_object(Bucket=bucket, Key=marker, Body=b"")
        _delete(bucket, staged)

    def is_published(self, uri: str) -> bool:
        bucket, key = split(uri)
        return _head(bucket, f"{key}/{MARKER}") is not None

    def children(self, uri: str) -> list[str]:
        bucket, key = split(uri)
        names = []
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=_prefix(key),
                                                                        Delimiter="/"):
            names += [p["Prefix"][len(_prefix(key)) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return [n for n in names if not n.startswith(TMP_PREFIX)]

    def remove(self, uri: str) -> None:
        bucket, key = split(uri)
        client().delete_object(Bucket=bucket, Key=f"{key}/{MARKER}")
        _delete(bucket, [o["Key"] for o in objects(bucket, f"{key}/")])

    def read_text(self, uri: str) -> str | None:
        bucket, key = split(uri)
        if _head(bucket, key) is None:
            return None
        return client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()

    def write_text(self, uri: str, text: str) -> None:
        bucket, key = split(uri)
        client().put_object(Bucket=bucket, Key=key, Body=text.encode())

    def lock(self, uri: str, holder: str) -> AbstractContextManager[None]:
        return lease(f"{uri.rstrip('/')}/LEASE", holder, self.read_text, self.write_text)


S3 = S3Backend()
