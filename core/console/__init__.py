"""One console for every job kind: what the user sees (log records, the workers' own lines, progress bars with an
ETA, errors, the result; as text or, with log.format=json, one JSON object per line) and the job's log file under
its directory that keeps everything, Ray's and DeepSpeed's start-up lines included."""

from core.console.config import LogConfig, check_log
from core.console.joblog import job_log
from core.console.output import result, setup, write
from core.console.progress import progress
from core.console.workers import adopt_ray_loggers, route_worker_output

__all__ = ["LogConfig", "adopt_ray_loggers", "check_log", "job_log", "progress", "result", "route_worker_output",
           "setup", "write"]
