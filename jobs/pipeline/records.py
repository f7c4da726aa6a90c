"""A finished stage's record, `<stage dir>/result/` (result.json, the sensitivity report's copy, COMPLETE last):
its MLflow run id, its summary (what the job printed and returned), what it produced, and the settings it ran with.
A rerun of the pipeline skips a stage whose record and outputs are all COMPLETE, after checking the settings."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from core import storage
from core.errors import ConfigError
from core.tracking import flatten
from jobs.pipeline import plan

FILE = "result.json"


def fingerprint(spec: Any, sections: tuple[str, ...]) -> dict[str, str]:
    """The stage spec's values that the stage's job reads (its kind's sections), flattened, as text."""
    tree = {name: dataclasses.asdict(getattr(spec, name)) for name in ("model", *sections) if hasattr(spec, name)}
    return {key: json.dumps(value, default=str) for key, value in flatten(tree).items()}


def read_done(root: str, kind: str) -> dict[str, Any] | None:
    """The stage's record when it and every output it names are published, else None (the stage runs)."""
    uri = plan.record_uri(root, kind)
    if not storage.is_published(uri):
        return None
    record = json.loads(storage.read_text(storage.join(uri, FILE)) or "{}")
    if not record or not all(storage.is_published(out) for out in record.get("outputs", [])):
        return None
    return record


def check_same_settings(record: dict[str, Any], now: dict[str, str], kind: str, root: str) -> None:
    """A finished stage is reused only with the settings it ran with; else one line naming the first change."""
    before = record.get("fingerprint", {})
    changed = sorted(k for k in {*before, *now} if before.get(k) != now.get(k))
    if changed:
        key = changed[0]
        raise ConfigError(key, f"stage {kind} of this pipeline finished with {key}={before.get(key, 'unset')} "
                          f"(now {now.get(key, 'unset')}): use another job.name, or remove "
                          f"{plan.stage_dir(root, kind)} to run it and the stages after it again")


def write(root: str, kind: str, record: dict[str, Any], report: str | None = None) -> None:
    """Publish the stage's record (COMPLETE last); `report`: a local sensitivity report directory to keep in it."""
    uri = plan.record_uri(root, kind)
    staged = storage.staging_dir(uri)
    if report is not None:
        shutil.copytree(report, staged / plan.REPORT, dirs_exist_ok=True)
    record = {**record, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (Path(staged) / FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    storage.publish_dir(staged, uri)


def write_result(root: str, result: dict[str, Any]) -> str:
    """The pipeline's published result (`<job>/result/`): the export the gate let through and its lineage."""
    uri = storage.join(root, plan.RECORD)
    staged = storage.staging_dir(uri)
    (Path(staged) / FILE).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return storage.publish_dir(staged, uri)
