"""Where a job's wall time goes: one stopwatch per driver process, split into consecutive phases.

`lap(phase)` ends the current phase and starts `phase`; every second from the process's start belongs to exactly
one phase, so the phases add up to the driver's wall time (up to the interpreter's exit, which only an outside
clock sees: benchmarks/overhead.py). `at` back-dates a lap to a wall-clock time already passed (a worker's own
report of when its imports ended, say), so one wait can be split after the fact.
"""

from __future__ import annotations

import os
import re
import time

# The order a job goes through them; a phase a job kind does not have stays 0.
PHASES = ("startup", "compose", "imports", "mlflow", "prepare", "ray", "workers", "load", "work", "publish", "end")


def process_started_at() -> float:
    """Wall-clock time this process was started (the interpreter's own start-up and imports count)."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19])  # field 22: starttime, clock ticks after boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, ValueError, AttributeError):  # not Linux: from the first import of this module
        return time.time()


class Stopwatch:
    def __init__(self, started_at: float, phase: str = "startup") -> None:
        self.restart(started_at, phase)

    def restart(self, at: float, phase: str) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.phase, self.since = phase, at

    def lap(self, phase: str, at: float | None = None) -> None:
        now = time.time()
        at = now if at is None else min(max(at, self.since), now)
        self.seconds[self.phase] = self.seconds.get(self.phase, 0.0) + at - self.since
        self.phase, self.since = phase, at

    def so_far(self) -> dict[str, float]:
        """Seconds per phase until now, the current phase included."""
        out = dict(self.seconds)
        out[self.phase] = out.get(self.phase, 0.0) + time.time() - self.since
        return out

    def line(self) -> str:
        """One line for the log: the phases that took time, in order."""
        seconds = self.so_far()
        parts = [f"{name} {sec:.1f}s" for name, sec in seconds.items() if sec >= 0.05]
        return f"timing: {', '.join(parts)} (total {sum(seconds.values()):.1f}s)"


def parse_line(text: str) -> dict[str, float] | None:
    """Seconds per phase (every phase, 0 where the line leaves one out) and "total", from the first `timing:` line
    in `text` (a job's output); None when there is none (the job failed before it)."""
    match = re.search(r"timing: (.*) \(total ([\d.]+)s\)", text)
    if not match:
        return None
    found = dict(part.rsplit(" ", 1) for part in match.group(1).split(", ") if part)
    return {**{p: float(found.get(p, "0s")[:-1]) for p in PHASES}, "total": float(match.group(2))}


STOPWATCH = Stopwatch(process_started_at())


def lap(phase: str, at: float | None = None) -> None:
    STOPWATCH.lap(phase, at)


def job_started() -> None:
    """The CLI's entry: "startup" ends here for a new process; a second job in the same process (tests calling the
    CLI in-process) starts from zero."""
    if STOPWATCH.phase == "startup":
        STOPWATCH.lap("compose")
    else:
        STOPWATCH.restart(time.time(), "compose")
