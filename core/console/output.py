"""The console: log records for the user (text or JSON), written around live progress bars, and the job's result.

Ray's own loggers (`ray.*`) reach the console at ERROR only unless log.verbose; every record reaches the job log."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from typing import Any

from core.console import joblog
from core.console.config import LogConfig, check_log
from core.redact import RedactingFilter, Redactor

CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET_LOGGERS = {"mlflow": logging.WARNING, "alembic": logging.WARNING,
                 "urllib3.connectionpool": logging.ERROR,  # a retry per line; the error says it all
                 # transformers imports torchao wherever it is installed (the fp8 extra): its probes of native
                 # extensions built for other Pythons, its note that CPUs lack Triton, and torch's warning about
                 # its Enum registration, printed by every process that builds a model
                 "torchao": logging.ERROR, "torch.utils._pytree": logging.ERROR}
settings = LogConfig()


def is_ray_logger(name: str) -> bool:
    return name == "ray" or name.startswith("ray.")


def write(text: str, stream: Any = None) -> None:
    """`text` on the console (stdout unless `stream`), live progress bars cleared around it and drawn again."""
    stream = stream or sys.stdout
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        with tqdm.external_write_mode(file=stream):
            stream.write(text)
            stream.flush()
        return
    stream.write(text)
    stream.flush()


def event(**fields: Any) -> None:
    """One JSON object on stdout (log.format=json), with its time."""
    write(json.dumps({"ts": joblog.stamp(), **fields}, default=str) + "\n")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {"ts": joblog.stamp(), "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return json.dumps(fields, default=str)


class ConsoleHandler(logging.Handler):
    def __init__(self, cfg: LogConfig) -> None:
        super().__init__(logging.WARNING if cfg.quiet else logging.INFO)
        self.verbose = cfg.verbose
        json_format = cfg.format == "json"
        self.setFormatter(JsonFormatter() if json_format else logging.Formatter(CONSOLE_FORMAT, "%H:%M:%S"))

    def filter(self, record: logging.LogRecord) -> bool:
        if is_ray_logger(record.name) and record.levelno < logging.ERROR and not self.verbose:
            return False  # Ray's start-up narration ("Started a local Ray instance", token auth): in the job log
        return super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001  logging's own rule: a handler never raises
            self.handleError(record)


class JsonLines(io.TextIOBase):
    """stdout under log.format=json: each line printed that is not a JSON object already becomes one."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner, self.pending = inner, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if not line.strip():
                continue  # one object per line, none empty
            if line.startswith("{"):
                self.inner.write(line + "\n")
            else:
                self.inner.write(json.dumps({"ts": joblog.stamp(), "level": "INFO", "logger": "stdout",
                                             "msg": line}) + "\n")
        return len(text)

    def flush(self) -> None:
        self.inner.flush()

    def fileno(self) -> int:
        return self.inner.fileno()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


def _bars_off(off: bool) -> None:
    """tqdm's own switch, which it reads when first imported (tokenization's bars, quantize's): bars are frames of
    carriage returns, no use to a log collector. Undone when this process later runs with bars (tests)."""
    if off:
        _set_here.add("TQDM_DISABLE")
        os.environ["TQDM_DISABLE"] = "1"
    elif "TQDM_DISABLE" in _set_here:
        _set_here.discard("TQDM_DISABLE")
        os.environ.pop("TQDM_DISABLE", None)


_set_here: set[str] = set()


def setup(redactor: Redactor, cfg: LogConfig | None = None) -> None:
    """The root logger's two handlers (console, job log), both redacting; called again once the spec's log settings
    and secrets are known (it replaces what it set before)."""
    global settings
    settings = cfg or LogConfig()
    check_log(settings)
    joblog.set_redactor(redactor)
    if isinstance(sys.stdout, JsonLines):
        sys.stdout = sys.stdout.inner
    if settings.format == "json":
        sys.stdout = JsonLines(sys.stdout)
    _bars_off(settings.format == "json" or settings.quiet)
    handlers = [ConsoleHandler(settings), joblog.JobLogHandler()]
    for handler in handlers:
        handler.addFilter(RedactingFilter(redactor))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    # MLflow's store creation (its own stderr handler) and alembic's migrations: not the user's business
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    quiet_libraries()


def quiet_libraries() -> None:
    """QUIET_LOGGERS' levels: in the driver (setup) and, as Ray's worker_process_setup_hook (core.cluster), in
    every worker process."""
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def result(summary: dict[str, Any], run_id: str, status: str = "FINISHED") -> None:
    """The job's outcome: `key: value` lines and the run's status (text), or one `result` event (json)."""
    lines = [f"{key}: {value}" for key, value in summary.items()]
    lines.append(f"MLflow run id: {run_id}  status: {status}" if run_id else f"status: {status}")
    joblog.write("".join(f"{joblog.stamp()} RESULT {line}\n" for line in lines))
    if settings.format == "json":
        event(event="result", status=status, run_id=run_id, summary=summary)
        return
    write("".join(f"{line}\n" for line in lines))
