"""Ray's output in the driver, routed: Ray's Python loggers into ours, and the lines its workers and actors print
(forwarded by Ray to the driver) into the job log, a progress bar, or the console (core/console/noise.py decides)."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from core.console import joblog, output
from core.console.noise import Classifier, is_error
from core.console.progress import feed as feed_progress

ANSI = re.compile(r"\x1b\[[0-9;]*m")
RAY_HANDLER = "ray_print_logs"  # the name Ray gives its own printer: ray.shutdown() removes what bears it
_classifier = Classifier()


def adopt_ray_loggers() -> None:
    """Ray's `ray` logger prints every INFO record on stderr through its own handler: hand it to ours instead
    (after `import ray`, before ray.init: "Started a local Ray instance" is one of them)."""
    ray_logger = logging.getLogger("ray")
    for handler in list(ray_logger.handlers):
        ray_logger.removeHandler(handler)
    ray_logger.propagate = True


def route_worker_output() -> None:
    """After ray.init(log_to_driver=True): every forwarded batch of lines through on_lines instead of Ray's printer
    (Ray's private dispatcher: ray is pinned in pyproject.toml)."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    dispatcher.remove_handler(RAY_HANDLER)
    dispatcher.add_handler(RAY_HANDLER, on_lines)


def _source(data: dict[str, Any]) -> tuple[str, str | None, str]:
    pid = str(data.get("pid", ""))
    actor = data.get("actor_name") or data.get("task_name") or None
    where = "" if data.get("ip") in (None, data.get("localhost")) else f", ip={data['ip']}"
    name = pid if pid in ("raylet", "autoscaler") else f"{actor + ' ' if actor else ''}pid={pid}{where}"
    return pid, actor, f"({name})"


def on_lines(data: dict[str, Any]) -> None:
    """One batch of lines from one worker process (Ray's format: pid, actor_name, is_err, lines)."""
    try:
        pid, actor, prefix = _source(data)
        lines = data.get("lines") or []
        if pid == "autoscaler":  # only its events, as Ray's printer does (e.g. no node type fits a request)
            from ray._private.worker import filter_autoscaler_events

            lines = list(filter_autoscaler_events(lines))
        stamp = joblog.stamp()
        # a progress bar's frames come as one line of carriage returns: its last frame is what a terminal shows
        clean = [ANSI.sub("", line).rstrip("\r").rpartition("\r")[2] for line in lines]
        joblog.write("".join(f"{stamp} {prefix} {line}\n" for line in clean))
        for line in clean:
            _show(pid, actor, prefix, line, bool(data.get("is_err")))
    except Exception as err:  # noqa: BLE001  never kill Ray's log thread: say so once per batch instead
        print(f"(orchestrator) could not route a worker's output: {err!r}", file=sys.__stderr__)


def _show(pid: str, actor: str | None, prefix: str, line: str, is_err: bool) -> None:
    if not line.strip() or feed_progress(line):
        return
    noise = _classifier.is_noise(pid, actor, line)
    settings = output.settings
    if (noise and not settings.verbose) or (settings.quiet and not is_error(line)):
        return
    if settings.format == "json":
        output.event(level="ERROR" if is_error(line) else "INFO", logger="worker", source=prefix, msg=line)
    else:
        output.write(f"{prefix} {line}\n", sys.stderr if is_err else sys.stdout)
