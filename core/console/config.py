"""`log.*`: what the console shows (the job's log file under its directory always gets everything)."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import ConfigError

FORMATS = ("text", "json")


@dataclass
class LogConfig:
    # text: log lines, worker output and progress bars | json: one JSON object per line on stdout (records, worker
    # lines, progress events with their metrics, the result), no bars: for log collectors
    format: str = "text"
    quiet: bool = False  # warnings, errors and the result only (--quiet); no bars
    verbose: bool = False  # Ray's and DeepSpeed's start-up lines on the console too (else only in <job dir>/logs)


def check_log(cfg: LogConfig) -> None:
    if cfg.format not in FORMATS:
        raise ConfigError("log.format", f"must be one of {', '.join(FORMATS)} (got {cfg.format!r})")
