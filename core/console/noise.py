"""Which worker lines are Ray's and DeepSpeed's start-up narration (kept in the job log, off the console unless
log.verbose), and which are errors (always shown). Each pattern says who prints it; what is not listed is shown."""

from __future__ import annotations

import re

ERROR = re.compile(r"Traceback \(most recent call last\)|\b(ERROR|CRITICAL|FATAL|Error|Exception)\b"
                   r"|^\[[\d\- :,.]+ [EF] \d+ \d+\]")  # the last: Ray's C++ (glog) error and fatal lines
# errors that are not: Ray Train's own actors, at every job's start or end, with nothing for the user to do
BENIGN = [re.compile(p) for p in (
    r"Actor with class name: 'PreemptionWatcher' .*constructor arguments in the object store",  # at start
    r"PlacementGroupCleaner: Failed to query Ray Train Controller actor state",  # dozens per job on GPU machines
)]
NARRATION = [re.compile(p) for p in (
    r"^\[\d{4}-\d\d-\d\d [\d:,]+\] \[(INFO|WARNING|DEBUG)\] \[",  # DeepSpeed's logger (accelerator, ZeRO set-up)
    r"^DeepSpeed \S+ built successfully",  # DeepSpeed's JIT op loader
    r"^Setting up process group for: ",  # Ray Train's worker
    r"^\d{4}-\d\d-\d\d [\d:,]+\s+(INFO|WARNING|DEBUG) \S+\.py:\d+ -- ",  # Ray's Python log format, in an actor
    r"^\[[\d\- :,.]+ [IW] \d+ \d+\]",  # Ray's C++ (glog) info and warning lines
    r"^(Loading weights|Loading checkpoint shards):",  # transformers' from_pretrained bar, in each worker that loads
)]
INTERNAL_ACTORS = ("TrainController",)  # Ray Train's controller: narrates the worker group's start and end
# Ray Train's detached safety net, which removes the placement group if the controller dies: its monitor thread
# queries Ray's state API and fails where that is unreachable (dozens of "Failed to query ..." on GPU machines; a
# traceback "Found multiple active Ray instances" where several clusters share a host). The job never depends on it.
BENIGN_ACTORS = ("PlacementGroupCleaner",)
CONTINUES = re.compile(r"^\s|^During handling|^The above exception|^\w[\w.]*(Error|Exception|Interrupt)\b")


def is_error(line: str) -> bool:
    return bool(ERROR.search(line)) and not any(p.search(line) for p in BENIGN)


class Classifier:
    """Per process: an error's following lines (a traceback's frames) are shown with it."""

    def __init__(self) -> None:
        self.in_error: set[str] = set()

    def is_noise(self, pid: str, actor: str | None, line: str) -> bool:
        actor = (actor or "").split(".")[0]  # a task or method: Class.method
        if actor in BENIGN_ACTORS:
            return True
        if is_error(line):
            self.in_error.add(pid)
            return False
        if pid in self.in_error and CONTINUES.match(line):
            return False
        self.in_error.discard(pid)
        if any(p.search(line) for p in BENIGN):
            return True
        return actor in INTERNAL_ACTORS or any(p.match(line) for p in NARRATION)
