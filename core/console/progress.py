"""Progress bars with an ETA driven by the lines a job's workers print, e.g. SFT's `step 3/20 loss=... lr=...`: the
driver sees them through Ray's log forwarding (core/console/workers.py), so no worker needs a channel of its own.
The line itself stays in the job log (and the metrics in MLflow); the console shows the bar instead (log.format=json:
one `progress` event per line, its numbers parsed)."""

from __future__ import annotations

import re
import sys
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from core.console import output

LAST_LINE_WAIT_SECONDS = 3.0  # Ray's log monitor forwards a worker's output within about a second
NUMBER = re.compile(r"(\w+)=(-?[\d.]+(?:e[+-]?\d+)?)")  # key=1.5e-03, key=2.462s, key=1.10GiB: the number


def numbers(text: str) -> dict[str, float]:
    return {key: float(value) for key, value in NUMBER.findall(text)}


class LineProgress:
    """One bar for the lines `pattern` matches (named groups `done` and `total`); `postfix`: the fields shown."""

    def __init__(self, pattern: str, desc: str, unit: str, postfix: tuple[str, ...]) -> None:
        self.pattern, self.desc, self.unit, self.postfix = re.compile(pattern), desc, unit, postfix
        self.bar: Any = None
        self.lock = threading.Lock()
        self.closed = False  # its lines may still arrive (Ray forwards worker output a moment later): kept off
        self.complete = threading.Event()  # the last line (done == total) came

    def feed(self, line: str) -> bool:
        """Whether `line` was this bar's (and so is not printed as it is)."""
        found = self.pattern.match(line)
        if not found:
            return False
        done, total = int(found["done"]), int(found["total"])
        if done >= total:
            self.complete.set()
        values = numbers(line[found.end():])
        if output.settings.format == "json":
            output.event(event="progress", what=self.desc, done=done, total=total, **values)
        elif not output.settings.quiet:
            with self.lock:
                if not self.closed:
                    self._draw(done, total, values, line)
        return True

    def _draw(self, done: int, total: int, values: dict[str, float], line: str) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:  # made at the first line, so the rate (and the ETA) leaves out the start-up
            self.bar = tqdm(total=total, initial=done, desc=self.desc, unit=self.unit, file=sys.stderr,
                            dynamic_ncols=True, mininterval=0 if sys.stderr.isatty() else 1)
        if self.bar.disable:  # TQDM_DISABLE: the plain line, as before there were bars
            output.write(line + "\n")
            return
        shown = {k: f"{values[k]:.4g}" for k in self.postfix if k in values}
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            if self.bar is not None:
                self.bar.close()
                self.bar = None


_known: deque[LineProgress] = deque(maxlen=64)  # the open ones and the last closed ones


def feed(line: str) -> bool:
    """Whether a progress bar took `line` (an open one, or a closed one whose late lines stay off the console)."""
    return any(tracker.feed(line) for tracker in reversed(list(_known)))


@contextmanager
def progress(pattern: str, desc: str, unit: str, postfix: tuple[str, ...] = ("loss",)) -> Iterator[LineProgress]:
    """While the block runs, worker lines matching `pattern` drive a bar (closed at the end, done or failed)."""
    tracker = LineProgress(pattern, desc, unit, postfix)
    _known.append(tracker)
    try:
        yield tracker
        if tracker.bar is not None:  # the work is done; Ray forwards its last lines a moment later
            tracker.complete.wait(LAST_LINE_WAIT_SECONDS)
    finally:
        tracker.close()
