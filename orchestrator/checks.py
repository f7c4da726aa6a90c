"""Every value of a composed spec checked before anything runs: the same code path for `--cfg job` and for a
job, before its MLflow run opens (a bad value leaves no run behind)."""

from __future__ import annotations

import re
from typing import Any

from core.errors import ConfigError
from core.tracking import check_log_exports
from jobs.registry import JOBS

JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_job_name(name: str | None) -> None:
    """A job's name is one directory under job.storage: no separators, no `..`, nothing a shell or S3 mangles."""
    if name is None:
        return
    if not JOB_NAME.fullmatch(name) or ".." in name:
        raise ConfigError("job.name", f"{name!r}: use letters, digits, '.', '_' and '-' (at most 128, starting "
                          "with a letter or digit, no '..'): it names one directory under job.storage")


def check_spec(spec: Any) -> None:
    """The generic fields, then the job kind's own `check(spec)` (config values only: no file, model or cluster), then
    the spec of every job it runs inside it (job=pipeline's stages), the same way."""
    check_job_name(spec.job.name)
    check_log_exports(spec.tracking.log_exports)
    kind = JOBS.get(spec.job.kind)
    check = getattr(kind, "check", None)
    if check is not None:
        check(spec)
    for stage in getattr(kind, "stage_specs", lambda _: [])(spec):
        check_spec(stage)
