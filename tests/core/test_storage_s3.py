"""core.storage on a real S3 endpoint (moto_server on 127.0.0.1) and on the local filesystem: atomic
publish (marker last, temporaries gone), cached downloads keyed by ETag/size, crashes mid-upload and
mid-commit leave nothing that readers accept."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from core import storage
from core.errors import ConfigError
from core.storage import s3


def _stage(final: str, files: dict[str, str]) -> Path:
    staged = storage.staging_dir(final)
    for name, text in files.items():
        (staged / name).parent.mkdir(parents=True, exist_ok=True)
        (staged / name).write_text(text)
    return staged


def _keys(bucket: str) -> list[str]:
    return sorted(o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket).get("Contents", []))


FILES = {"config.json": "{}", "model.safetensors": "weights", "sub/tokenizer.json": "tok"}


def test_publish_then_fetch_roundtrip(s3_bucket: str) -> None:
    final = f"s3://{s3_bucket}/runs/job/export"
    assert storage.publish_dir(_stage(final, FILES), final) == final
    assert _keys(s3_bucket) == [f"runs/job/export/{k}" for k in ("COMPLETE", "config.json", "model.safetensors",
                                                                 "sub/tokenizer.json")]  # no temporary left
    assert storage.is_published(final)
    local = storage.local_path(final, field="model.path")
    assert local.name == "export" and (local / "sub" / "tokenizer.json").read_text() == "tok"
    assert storage.published_children(f"s3://{s3_bucket}/runs/job") == [final]


def test_downloads_are_cached_until_the_object_changes(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"s3://{s3_bucket}/data/train.jsonl"
    storage.write_text(uri, "one")
    calls = []
    real = s3.client().download_file
    monkeypatch.setattr(s3.client(), "download_file", lambda *a, **k: (calls.append(a[1]), real(*a, **k)))
    first = storage.local_path(uri, field="data")
    assert first.read_text() == "one" and storage.local_path(uri, field="data") == first
    assert len(calls) == 1  # the second read came from the cache
    storage.write_text(uri, "two!")  # another ETag and size: another cache entry
    assert storage.local_path(uri, field="data").read_text() == "two!" and len(calls) == 2
    assert first.read_text() == "one"


def test_concurrent_fetches_download_each_object_once(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver and its workers starting together on one node (the sensitivity warm-up) fetch one model directory:
    one downloads, the others wait for it and read the same files."""
    import threading
    import time

    final = f"s3://{s3_bucket}/models/x"
    storage.publish_dir(_stage(final, FILES), final)
    calls = []
    real = s3.client().download_file

    def slow(*args, **kwargs):  # long enough that unserialised fetchers would all find the files missing
        calls.append(args[1])
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(s3.client(), "download_file", slow)
    paths = []
    readers = [threading.Thread(target=lambda: paths.append(storage.local_path(final, field="model.path")))
               for _ in range(3)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    assert len(paths) == 3 and len(set(paths)) == 1 and (paths[0] / "sub" / "tokenizer.json").read_text() == "tok"
    assert sorted(calls) == sorted(f"models/x/{k}" for k in ("COMPLETE", *FILES))  # each object once


def test_republish_replaces_and_drops_stale_files(s3_bucket: str) -> None:
    final = f"s3://{s3_bucket}/job/export"
    storage.publish_dir(_stage(final, {"a.txt": "1", "old.txt": "x"}), final)
    storage.publish_dir(_stage(final, {"a.txt": "2"}), final)
    assert _keys(s3_bucket) == ["job/export/COMPLETE", "job/export/a.txt"]
    assert (storage.local_path(final, field="f") / "a.txt").read_text() == "2"


def test_crash_mid_upload_leaves_nothing_readers_accept(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    final = f"s3://{s3_bucket}/job/checkpoints/step_000004"
    real, uploaded = s3.upload_file, []

    def flaky(local: Path, bucket: str, key: str) -> None:
        if len(uploaded) == 2:
            raise ConnectionError("simulated crash after 2 files")
        real(local, bucket, key)
        uploaded.append(key)

    monkeypatch.setattr(s3, "upload_file", flaky)
    with pytest.raises(ConnectionError):
        storage.publish_dir(_stage(final, FILES), final)
    assert len(uploaded) == 2 and all("/.tmp-" in k for k in _keys(s3_bucket))  # only the temporary prefix
    assert not storage.is_published(final)
    assert storage.published_children(f"s3://{s3_bucket}/job/checkpoints") == []
    with pytest.raises(ConfigError, match="unfinished upload"):
        storage.local_path(final, field="model.path")


def test_crash_mid_commit_leaves_no_marker(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    final = f"s3://{s3_bucket}/job/export"
    storage.publish_dir(_stage(final, {"a.txt": "old"}), final)
    real, copied = s3.client().copy, []

    def flaky(*args, **kwargs) -> None:
        if copied:
            raise ConnectionError("simulated crash while copying to the final keys")
        copied.append(real(*args, **kwargs))

    monkeypatch.setattr(s3.client(), "copy", flaky)
    with pytest.raises(ConnectionError):
        storage.publish_dir(_stage(final, FILES), final)
    assert f"job/export/{storage.MARKER}" not in _keys(s3_bucket)  # the old marker went first
    assert not storage.is_published(final)
    with pytest.raises(ConfigError, match="unfinished upload"):
        storage.local_path(final, field="model.path")


def test_several_writers_share_one_publish(s3_bucket: str) -> None:
    """SFT ranks: each pushes only its own files under a shared token; one commit publishes them all."""
    final, token = f"s3://{s3_bucket}/ckpt/step_000002", "abc123"
    for rank in range(2):
        staged = storage.staging_dir(final, token)
        (staged / f"rank{rank}.pt").write_text(str(rank))
        storage.push(staged, final, token)
        assert not staged.exists()  # uploaded, local copy dropped
    assert not storage.is_published(final)
    storage.commit(final, token)
    assert _keys(s3_bucket) == ["ckpt/step_000002/COMPLETE", "ckpt/step_000002/rank0.pt", "ckpt/step_000002/rank1.pt"]


def test_remove_read_write_and_missing(s3_bucket: str) -> None:
    root = f"s3://{s3_bucket}/r"
    for step in (1, 2):
        storage.publish_dir(_stage(f"{root}/step_{step}", {"f": str(step)}), f"{root}/step_{step}")
    storage.remove(f"{root}/step_1")
    assert storage.published_children(root, "step_") == [f"{root}/step_2"]
    assert storage.read_text(f"{root}/manifest.json") is None
    storage.write_text(f"{root}/manifest.json", '{"a": 1}')
    assert storage.read_text(f"{root}/manifest.json") == '{"a": 1}'
    with pytest.raises(ConfigError, match="model.path: s3://.*/nothing: no such file"):
        storage.local_path(f"{root}/nothing", field="model.path")


def test_local_backend_publishes_with_the_same_interface(tmp_path: Path) -> None:
    final = tmp_path / "job" / "export"
    staged = _stage(str(final), FILES)
    assert staged.name == "export" and not storage.is_published(final)
    assert storage.published_children(tmp_path / "job") == []  # staging is never listed
    assert storage.publish_dir(staged, final) == str(final)
    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == ["export"]
    assert (final / storage.MARKER).is_file() and storage.local_path(final, field="x") == final


def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown storage scheme 'gs'"):
        storage.local_path("gs://bucket/x", field="model.path")
