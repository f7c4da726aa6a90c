"""A Ray job submitter that owns its job: the nightly CronJob's container (k8s/base/cronjob-pipeline.yaml).

    python -m orchestrator.submit --address http://head:8265 --prefix nightly-pipeline --deadline 20000 \
        [--working-dir /app] -- python -m orchestrator.latest -- job=pipeline ...

1. Jobs of an earlier submitter with the same --prefix still running (one that was SIGKILLed, or lost with its node)
   are stopped first, and waited for: two runs never overlap.
2. The entrypoint is submitted as `<prefix>-<UTC time>`; its logs are streamed here.
3. It ends when the job ends (the job's exit: 0 succeeded; the driver's own exit code when Ray reports it, e.g. 2 bad
   input, 3 gate failed; else 1), or, on SIGTERM/SIGINT (Kubernetes stopping the pod: activeDeadlineSeconds, a
   deleted Job) or --deadline, after stopping the job and waiting for it (at most --stop-wait seconds): 143 / 130 /
   124. Every wait has a deadline. The job API's token comes from RAY_AUTH_TOKEN (RAY_AUTH_MODE=token).
A failure of its own is one `error:` line: exit 2 when the job API cannot be reached, else 1."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from typing import Any

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
POLL_SECONDS = 2.0
_signal: list[int] = []


def _on_signal(signum: int, frame: object) -> None:
    _signal.append(signum)


def _status(client: Any, job_id: str) -> str:
    return str(client.get_job_status(job_id))  # JobStatus is a str enum: "RUNNING", ...


def _wait_ended(client: Any, job_ids: list[str], seconds: float) -> list[str]:
    """Wait (at most `seconds`) for the jobs to reach a terminal state; the ones still running."""
    deadline = time.monotonic() + seconds
    running = list(job_ids)
    while running and time.monotonic() < deadline:
        running = [j for j in running if _status(client, j) not in TERMINAL]
        if running:
            time.sleep(POLL_SECONDS)
    return running


def stop_leftovers(client: Any, prefix: str, wait: float) -> list[str]:
    """Stop every job of this prefix that is not finished; their ids."""
    left = [j.submission_id for j in client.list_jobs()
            if (j.submission_id or "").startswith(f"{prefix}-") and str(j.status) not in TERMINAL]
    for job_id in left:
        print(f"submit: {job_id} is still running (its submitter is gone): stopping it", flush=True)
        client.stop_job(job_id)
    still = _wait_ended(client, left, wait)
    if still:
        raise RuntimeError(f"jobs {', '.join(still)} did not stop within {wait:.0f} s")
    return left


class _Logs:
    """The job's log printed as it grows (the job API returns the whole log; only the new part is printed)."""

    def __init__(self, client: Any, job_id: str) -> None:
        self.client, self.job_id, self.seen = client, job_id, 0

    def flush(self) -> None:
        text = self.client.get_job_logs(self.job_id)
        if len(text) > self.seen:
            sys.stdout.write(text[self.seen:])
            sys.stdout.flush()
            self.seen = len(text)


def _exit_code(client: Any, job_id: str, status: str) -> int:
    if status == "SUCCEEDED":
        return 0
    code = getattr(client.get_job_info(job_id), "driver_exit_code", None)
    return code if isinstance(code, int) and code > 0 else 1


def run(args: argparse.Namespace, entrypoint: list[str]) -> int:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(args.address)
    stop_leftovers(client, args.prefix, args.stop_wait)
    if _signal:  # terminated before anything was submitted
        return 128 + _signal[0]
    job_id = f"{args.prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    runtime_env = {"working_dir": args.working_dir} if args.working_dir else None
    client.submit_job(entrypoint=shlex.join(entrypoint), submission_id=job_id, runtime_env=runtime_env)
    print(f"submit: {job_id} submitted", flush=True)
    logs, deadline = _Logs(client, job_id), time.monotonic() + args.deadline
    while not _signal and time.monotonic() < deadline:
        status = _status(client, job_id)
        logs.flush()
        if status in TERMINAL:
            print(f"submit: {job_id} {status.lower()}", flush=True)
            return _exit_code(client, job_id, status)
        time.sleep(POLL_SECONDS)
    why = signal.Signals(_signal[0]).name if _signal else f"--deadline of {args.deadline:.0f} s"
    print(f"submit: {why}: stopping {job_id}", flush=True)
    client.stop_job(job_id)
    left = _wait_ended(client, [job_id], args.stop_wait)
    logs.flush()
    print(f"submit: {job_id} {'did not stop in time' if left else 'stopped'}", flush=True)
    return 128 + _signal[0] if _signal else 124


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print("error: give the job's entrypoint after --", file=sys.stderr)
        return 2
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m orchestrator.submit")
    parser.add_argument("--address", required=True, help="the head's job API, http://<head>:8265")
    parser.add_argument("--prefix", required=True, help="submission ids <prefix>-<time>; one job of it at a time")
    parser.add_argument("--deadline", type=float, required=True, help="seconds until the job is stopped")
    parser.add_argument("--stop-wait", type=float, default=90.0, help="seconds to wait for a stopped job to end")
    parser.add_argument("--working-dir", default=None)
    args = parser.parse_args(argv[:cut])
    before = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return run(args, argv[cut + 1:])
    except Exception as err:  # noqa: BLE001  the job API unreachable, refused (token), a job that would not stop
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"error: submit: {type(err).__name__}: {first}"[:500], file=sys.stderr, flush=True)
        return 2 if isinstance(err, ConnectionError) else 1  # the address or the network: the environment
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
