"""The job's log file, `<job dir>/logs/job.log`: every log record (Ray's included) and every line the job's Ray
workers and actors printed, whatever the console showed of them. Lines written before a job's file opens (Ray
attached and workers started before the MLflow run, say) are kept and go into the first file that opens; a job run
inside another (a pipeline's stage) writes to both files."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from core.redact import Redactor

log = logging.getLogger(__name__)
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_files: list[TextIO] = []
_early: deque[str] = deque(maxlen=50_000)  # bounded: a process that never opens a job log (--cfg, tests)
_lock = threading.Lock()
_redactor = Redactor()  # console.setup() sets the job's: secrets never reach the file


def set_redactor(redactor: Redactor) -> None:
    global _redactor
    _redactor = redactor


def stamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"


def write(text: str) -> None:
    """One or more whole lines (ending in a newline) into every open job log, or kept for the first to open."""
    text = _redactor.text(text)
    with _lock:
        if not _files:
            _early.append(text)
            return
        for file in _files:
            file.write(text)
            file.flush()  # `tail -f` shows it as it happens; a killed job loses nothing


class JobLog:
    """An open job log; `upload_to(run)`: copied into that MLflow run (logs/job.log) when it closes, so a job on
    s3:// storage (whose job dir is a local scratch copy) keeps it too."""

    def __init__(self, path: Path) -> None:
        self.path, self.run = path, None

    def upload_to(self, run: Any) -> None:
        self.run = run

    def _upload(self) -> None:
        if self.run is None or not getattr(self.run, "run_id", ""):
            return
        try:
            self.run.log_artifacts(self.path.parent, "logs")
        except Exception as err:  # noqa: BLE001  the job's own outcome matters more than its log's copy
            log.warning("could not copy %s into the MLflow run: %s", self.path, err)


class JobLogHandler(logging.Handler):
    """Every record, formatted with its date, into the job logs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001  logging's own rule: a handler never raises
            self.handleError(record)


@contextmanager
def job_log(path: Path) -> Iterator[JobLog]:
    """`path` open (appended: a resumed job keeps its earlier runs' lines) while the job runs; an error leaving the
    job is written into it with its traceback before it goes on to the CLI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    file = path.open("a", encoding="utf-8")
    with _lock:
        if not _files:
            file.writelines(_early)
            _early.clear()
        _files.append(file)
    handle = JobLog(path)
    try:
        yield handle
    except BaseException as err:
        lines = "".join(traceback.format_exception(err))
        write(f"{stamp()} ERROR job: ended by {type(err).__name__}: {err}\n{lines}")
        raise
    finally:
        with _lock:
            _files.remove(file)
        file.close()
        handle._upload()
