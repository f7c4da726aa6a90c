"""tracking.log_exports: an export copied into MLflow, or only its URI and a checksum manifest (core/tracking.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.tracking import LOG_EXPORTS_AUTO_BYTES, RunHandle, TrackingConfig, check_log_exports, log_export, start_run


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def export(tmp_path: Path) -> Path:
    staged = tmp_path / "export"
    (staged / "sub").mkdir(parents=True)
    (staged / "model.safetensors").write_bytes(bytes(range(256)) * 40)
    (staged / "config.json").write_text('{"model_type": "qwen3"}\n')
    (staged / "sub" / "tokenizer.json").write_text("{}\n")
    return staged


def _run(store: Path) -> RunHandle:
    return start_run(TrackingConfig(), store, "export-test", {})


def _artifacts(run: RunHandle) -> set[str]:
    client, found, todo = run.client, set(), ["export"]
    while todo:
        for item in client.list_artifacts(run.run_id, todo.pop()):
            (todo.append(item.path) if item.is_dir else found.add(item.path))
    return found


@pytest.mark.parametrize(("mode", "limit", "copied"), [("auto", LOG_EXPORTS_AUTO_BYTES, True), ("auto", 1000, False),
                                                       (True, 1000, True), ("false", LOG_EXPORTS_AUTO_BYTES, False)])
def test_an_export_is_copied_or_listed_by_its_checksums(mode, limit: int, copied: bool, store: Path, export: Path,
                                                        tmp_path: Path) -> None:
    run = _run(store)
    assert log_export(run, export, "s3://bucket/runs/job/export", mode, limit=limit) is copied
    assert run.client.get_run(run.run_id).data.tags["export_uri"] == "s3://bucket/runs/job/export"
    if copied:
        assert _artifacts(run) == {"export/model.safetensors", "export/config.json", "export/sub/tokenizer.json"}
        return
    assert _artifacts(run) == {"export/manifest.json"}
    manifest = json.loads(Path(run.client.download_artifacts(run.run_id, "export/manifest.json", str(tmp_path)))
                          .read_text())
    files = sorted(p for p in export.rglob("*") if p.is_file())
    assert manifest["uri"] == "s3://bucket/runs/job/export"
    assert manifest["total_bytes"] == sum(p.stat().st_size for p in files) > 1000
    assert manifest["files"] == [{"name": p.relative_to(export).as_posix(), "bytes": p.stat().st_size,
                                  "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in files]


def test_no_tracking_logs_nothing(export: Path) -> None:
    assert log_export(RunHandle("", ""), export, "runs/job/export", "true") is False


def test_log_exports_takes_auto_true_false_only() -> None:
    for value in ("auto", "true", "false", "TRUE", True, False):
        assert check_log_exports(value) in ("auto", "true", "false")
    with pytest.raises(ConfigError, match=r"tracking\.log_exports.*must be one of auto, true, false") as err:
        check_log_exports("sometimes")
    assert err.value.field == "tracking.log_exports"
