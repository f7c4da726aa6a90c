"""`python -m orchestrator job=<kind> <hydra overrides>`: compose, track, place, run, publish."""

from __future__ import annotations

import logging
import os
import sys
import traceback

from omegaconf import OmegaConf

from core import interrupt
from core.errors import UserError
from core.redact import RedactingFilter, Redactor, redact_std_streams

log = logging.getLogger("orchestrator")
USAGE = """usage: python -m orchestrator [--cfg job] [key=value ...]
  Hydra overrides, e.g.  job=sft model=qwen3_tiny trainer.num_workers=2 trainer.max_steps=20
  --cfg job   print the composed, validated spec (secrets redacted) and run nothing
Config groups live in conf/ (job, model, data, trainer, tracking, cluster)."""


def _setup_logging(redactor: Redactor) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(RedactingFilter(redactor))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # MLflow's store creation (its own stderr handler) and alembic's migrations: not the user's business
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # a retry per line; the error says it all


def _parse_args(argv: list[str]) -> tuple[list[str], str | None]:
    overrides, cfg_mode = [], None
    args = iter(argv)
    for arg in args:
        if arg in ("-h", "--help"):
            print(USAGE)
            sys.exit(0)
        if arg in ("--cfg", "-c"):
            cfg_mode = next(args, "job")
        elif arg.startswith("--cfg="):
            cfg_mode = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            raise UserError(f"unknown option {arg!r} (try --help)")
        else:
            overrides.append(arg)
    return overrides, cfg_mode


def main(argv: list[str] | None = None) -> int:
    from core.timing import job_started, lap

    job_started()  # the interpreter's start and this module's imports were "startup"
    argv = sys.argv[1:] if argv is None else argv
    redactor = Redactor()
    redact_std_streams(redactor)  # before anything can print: tracebacks, warnings and progress bars included
    interrupt.install()
    _setup_logging(redactor)
    try:
        from orchestrator.checks import check_spec
        from orchestrator.compose import compose, to_spec

        overrides, cfg_mode = _parse_args(argv)
        cfg = compose(overrides)
        spec = to_spec(cfg)
        redactor = Redactor(spec.tracking.redact_keys, spec.tracking.redact_values)
        redact_std_streams(redactor)
        _setup_logging(redactor)
        if cfg_mode:
            check_spec(spec)  # the run path checks in run_job
            print(OmegaConf.to_yaml(redactor.tree(OmegaConf.to_container(cfg))), end="")
            return 0
        lap("imports")  # the runner, the job kind's driver and what they import
        from orchestrator.runner import run_job

        run_job(spec, cfg, redactor)
        return 0
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
