"""Hydra's own command line: the flags a `@hydra.main` application takes, parsed by Hydra's own parser (so `--help`
lists them as Hydra words them), plus `--quiet`. A mistake is one `error:` line and exit 2, not argparse's usage
block and its own exit."""

from __future__ import annotations

import argparse
from typing import NoReturn

from core.errors import UserError

# the flags that each pick what to do instead of running the job; Hydra allows one of them at a time
COMMANDS = {"multirun": "--multirun", "cfg": "--cfg", "info": "--info", "shell_completion": "--shell-completion"}

OUR_HELP = {
    "shell_completion": "Tab completion: install=bash|zsh prints a script to eval, e.g. "
                        'eval "$(python -m orchestrator -sc install=bash)"; uninstall=bash|zsh',
    "config_path": "The primary config directory instead of conf/ (absolute or relative to the current directory); "
                   "conf/'s groups stay reachable",
    "config_name": "The root config in it (default: config)",
    "config_dir": "Adds a config directory to the search path: your job files in <dir>/experiment/, +experiment=NAME",
    "multirun": "A sweep: one job per combination of the comma-separated values (key=a,b), concurrently on one Ray "
                "cluster, under one parent MLflow run",
    "experimental_rerun": "Not supported (Hydra's pickled job config is not written)",
}


def _refuse(message: str) -> NoReturn:
    # argparse's own texts: "unrecognized arguments: --x", "argument --cfg/-c: invalid choice: 'x' (choose from ...)"
    raise UserError(f"{message} (try --help)")


def parser() -> argparse.ArgumentParser:
    """Hydra's parser (hydra-core 1.3's, private but pinned in pyproject.toml) with our additions."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser()
    args.prog = "python -m orchestrator"
    args.add_argument("--quiet", "-q", action="store_true",
                      help="Only warnings, errors and the result on the console (same as log.quiet=true)")
    for action in args._actions:  # Hydra's words for a @hydra.main file, ours for `python -m orchestrator`
        if action.dest in OUR_HELP:
            action.help = OUR_HELP[action.dest]
    args.error = _refuse  # type: ignore[method-assign]  # instead of printing usage and exiting 2 itself
    return args


def parse(argv: list[str]) -> argparse.Namespace:
    """The flags and overrides of `argv`; UserError for an unknown flag, a bad choice or a bad combination."""
    args = parser().parse_intermixed_args(argv)  # flags anywhere: `job=sft --cfg job trainer.x=1`
    unknown = [a for a in args.overrides if a.startswith("-")]  # after an override argparse takes any word
    if unknown:
        _refuse(f"unrecognized arguments: {' '.join(unknown)}")
    chosen = [flag for name, flag in COMMANDS.items() if getattr(args, name)]
    if args.run and chosen:
        chosen.insert(0, "--run")
    if len(chosen) > 1:
        raise UserError(f"{' and '.join(chosen)}: give only one of --run, --multirun, --cfg, --info, "
                        "--shell-completion")
    if args.resolve and not (args.cfg or args.help):
        raise UserError("--resolve: only with --cfg or --help")
    if args.experimental_rerun:
        raise UserError("--experimental-rerun: not supported (no pickled job config is written); rerun the same "
                        "command line or job file")
    if args.quiet:
        args.overrides.append("log.quiet=true")
    return args
