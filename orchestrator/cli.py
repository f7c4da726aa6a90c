"""`python -m orchestrator [flags] job=<kind> <hydra overrides>`: compose, track, place, run, publish; Hydra's
own flags (orchestrator/flags.py) pick another command (--help, --cfg, --info, --shell-completion) or a sweep (-m).

Why the compose API with Hydra's flags and not @hydra.main (README "Running jobs"): this boundary keeps one
`error:` line and exit 2 for every input mistake (Hydra's run_and_report prints its own and exits 1), a sweep runs
its jobs concurrently on one Ray cluster under one parent MLflow run (Hydra's basic launcher runs them one after
another in this process), and nothing changes the working directory or writes Hydra's outputs/ tree."""

from __future__ import annotations

import logging
import os
import sys
import traceback

from core import console, interrupt
from core.redact import Redactor, redact_std_streams

log = logging.getLogger("orchestrator")


def main(argv: list[str] | None = None) -> int:
    from core.timing import job_started, lap

    job_started()  # the interpreter's start and this module's imports were "startup"
    argv = sys.argv[1:] if argv is None else argv
    redactor = Redactor()
    redact_std_streams(redactor)  # before anything can print: tracebacks, warnings and progress bars included
    interrupt.install()
    console.setup(redactor)
    try:
        from orchestrator.commands import dispatch
        from orchestrator.compose import App, compose, to_spec
        from orchestrator.flags import parse, parser

        args = parse(argv)
        app = App.from_args(args)
        code = dispatch(args, app, parser(), redactor)  # --help, --cfg, --info, --shell-completion
        if code is not None:
            return code
        if args.multirun:
            from orchestrator.sweep import run_sweep

            return run_sweep(app, args.overrides, redactor)
        cfg = compose(args.overrides, app)
        spec = to_spec(cfg)
        redactor = Redactor(spec.tracking.redact_keys, spec.tracking.redact_values)
        redact_std_streams(redactor)
        console.setup(redactor, spec.log)
        lap("imports")  # the runner, the job kind's driver and what they import
        from orchestrator.runner import run_job

        run_job(spec, cfg, redactor)
        return 0
    except SystemExit as done:  # --version: argparse printed it
        return int(done.code or 0)
    except BrokenPipeError:  # `... --help | head`: the reader left; stay quiet, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not raise again
        return 141
    except KeyboardInterrupt as err:  # core.interrupt.Interrupted: a signal; plain: Ctrl-C before the handlers
        _end_progress_bars()
        print(f"error: {err or 'interrupted'}", file=sys.stderr, flush=True)
        return getattr(err, "exit_code", 130)
    except Exception as err:  # noqa: BLE001  the error boundary: one line for the user's causes, else the traceback
        return _report(err)


def _end_progress_bars() -> None:
    """Close the bars a failure left open: their last frame goes first, the error line stays the last one."""
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()


def _report(err: Exception) -> int:
    from orchestrator.failures import as_user_error, describe

    _end_progress_bars()
    user_error = as_user_error(err)
    if user_error is not None:
        print(f"error: {user_error}", file=sys.stderr, flush=True)
        return user_error.exit_code
    traceback.print_exception(err)  # through the redacting stderr
    print(f"error: {describe(err)} (unexpected: the traceback above says where)", file=sys.stderr, flush=True)
    return 1
