"""The flags that do something else than run the job, as a `@hydra.main` application does them: --help,
--hydra-help, --cfg job|hydra|all (with --resolve, --package), --info, --shell-completion. Hydra's own code does
each; ours composes (one-line errors) and redacts what is printed."""

from __future__ import annotations

import argparse
import copy
from typing import Any

from omegaconf import DictConfig, OmegaConf

from core.console import check_log
from core.redact import Redactor
from orchestrator.compose import App, compose, hydra_app, hydra_error, to_spec


def dispatch(args: argparse.Namespace, app: App, parser: argparse.ArgumentParser, redactor: Redactor) -> int | None:
    """The exit code of the command the flags ask for; None when they ask to run the job (or a sweep)."""
    from hydra.errors import HydraException

    try:
        if args.help or args.hydra_help:
            _help(args, app, parser, redactor)
        elif args.cfg:
            _show_cfg(args, app, redactor)
        elif args.info:
            _info(args, app)
        elif args.shell_completion:
            from orchestrator.completion import shell_completion

            shell_completion(app, args.overrides)
        else:
            return None
    except HydraException as err:  # Hydra's own code (info, completion) composing: one line, as for a run
        raise hydra_error(err, args.overrides) from None
    return 0


def _composed(app: App, overrides: list[str]) -> DictConfig:
    """The whole config, Hydra's `hydra` node included (HydraConfig set: its interpolations resolve)."""
    from hydra.core.hydra_config import HydraConfig

    cfg = compose(overrides, app, keep_hydra=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _job_part(cfg: DictConfig) -> dict[str, Any]:
    """The job's config as a run would use it: resolved, checked like a run (one-line errors), secrets masked."""
    from orchestrator.checks import check_spec

    job = copy.deepcopy(cfg)
    with _writable(job):
        del job["hydra"]
    OmegaConf.resolve(job)
    spec = to_spec(job)
    check_spec(spec)
    check_log(spec.log)  # a run checks it when it sets the console up
    redactor = Redactor(spec.tracking.redact_keys, spec.tracking.redact_values)  # the job's own secrets too
    return redactor.tree(OmegaConf.to_container(job))


def _writable(cfg: DictConfig) -> Any:
    from omegaconf import flag_override

    return flag_override(cfg, ["struct", "readonly"], [False, False])


def _show_cfg(args: argparse.Namespace, app: App, redactor: Redactor) -> None:
    from hydra._internal.hydra import Hydra

    cfg = _composed(app, args.overrides)
    shown: dict[str, Any] = {}
    if args.cfg in ("job", "all"):
        shown.update(_job_part(cfg))
    if args.cfg in ("hydra", "all"):
        hydra_node = Hydra.get_sanitized_hydra_cfg(cfg)
        if args.resolve:  # as Hydra's: in place, a value a run fills in (hydra.job.num) stays ???
            OmegaConf.set_readonly(hydra_node.hydra, None)
            OmegaConf.resolve(hydra_node)
        shown["hydra"] = redactor.tree(OmegaConf.to_container(hydra_node.hydra))
    tree = OmegaConf.create(shown)
    package = None if args.package in (None, "_global_") else args.package
    if package is not None:
        tree = OmegaConf.select(tree, package)
        if tree is None:
            from core.errors import UserError

            raise UserError(f"--package: {package!r} not found in the config")
    if package is not None:
        print(f"# @package {package}")
    print(OmegaConf.to_yaml(tree) if isinstance(tree, DictConfig) else tree, end="" if isinstance(tree, DictConfig)
          else "\n")


def _help(args: argparse.Namespace, app: App, parser: argparse.ArgumentParser, redactor: Redactor) -> None:
    """Hydra's help page from conf/hydra/help/orchestrator.yaml's template: the flags, every config group and its
    options (experiment: the job files), then the composed config (--help job=quantize: that job's)."""
    from hydra._internal.hydra import Hydra

    cfg = _composed(app, args.overrides)
    with hydra_app(app) as hydra:
        if args.hydra_help:
            text = hydra.get_help(cfg.hydra.hydra_help, Hydra.get_sanitized_hydra_cfg(cfg), parser, resolve=False)
        else:
            job = OmegaConf.create(_job_part(cfg))
            text = hydra.get_help(cfg.hydra.help, job, parser, resolve=args.resolve)
    print(text)


def _info(args: argparse.Namespace, app: App) -> None:
    """Hydra's --info (search path, defaults list and tree, config sources, plugins), logged by Hydra at DEBUG on
    stdout: its own logging for this command only (the process ends after it)."""
    with hydra_app(app) as hydra:
        hydra.show_info(args.info, config_name=app.config_name, overrides=args.overrides)
