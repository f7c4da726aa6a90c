"""Hydra composition of conf/ into a typed RunSpec; every failure becomes one ConfigError line."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.errors import HydraException, MissingConfigException, OverrideParseException, SearchPathException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

import orchestrator.spec  # noqa: F401  (registers the schema)
from core.errors import ConfigError
from core.models.registry import MODELS
from jobs.registry import JOBS
from orchestrator.spec import RunSpec

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def _omegaconf_cause(err: BaseException) -> OmegaConfBaseException | None:
    while err is not None:
        if isinstance(err, OmegaConfBaseException):
            return err
        err = err.__cause__ or err.__context__
    return None


def _from_omegaconf(err: OmegaConfBaseException) -> ConfigError:
    key = getattr(err, "full_key", None) or "config"
    message = str(getattr(err, "msg", None) or err).splitlines()[0].strip()
    message = re.sub(r"^Key '([^']+)' not in '(\w+)'$", r"unknown key '\1' (not a field of \2)", message)
    message = re.sub(r"^Missing mandatory value: .*", "missing required value", message)
    return ConfigError(key, message)


def hydra_error(err: HydraException, overrides: list[str]) -> ConfigError:
    """A Hydra exception as the one-line ConfigError it means."""
    if isinstance(err, SearchPathException):  # --config-dir names no directory
        return ConfigError("--config-dir", str(err).splitlines()[0])
    if isinstance(err, MissingConfigException) and "primary config" in str(err):
        return ConfigError("--config-name", f"{str(err).splitlines()[0]} (searched: conf/, --config-path, "
                           "--config-dir)")
    if isinstance(err, MissingConfigException):
        match = re.search(r"Could not find '([\w/]+)/([\w.-]+)'", str(err))
        if match:
            group, option = match.groups()
            options = ", ".join(sorted(err.options or []))
            return ConfigError(group, f"unknown option {option!r} (available: {options})")
    cause = _omegaconf_cause(err)
    if cause is not None:
        return _from_omegaconf(cause)
    if isinstance(err, OverrideParseException):
        return ConfigError("overrides", str(err).splitlines()[0])
    ambiguous = re.match(r"Ambiguous value for argument '([^']*)'", str(err))
    if ambiguous:  # Hydra's text takes 4 lines
        return ConfigError("overrides", f"{ambiguous.group(1)}: several values: add -m (--multirun) to run one job "
                           "per value, or write a list as [a,b] or one string as 'a,b'")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ConfigError("config", first)


@dataclass
class App:
    """Where a job's configs come from, as @hydra.main's flags say: the primary directory (conf/, or --config-path,
    absolute or relative to the current directory), its root config (--config-name) and one more directory searched
    after it (--config-dir: a user's own job files, `experiment/<name>.yaml` for +experiment=<name>)."""
    config_path: str | None = None
    config_name: str = "config"
    config_dir: str | None = None

    @classmethod
    def from_args(cls, args: Any) -> App:
        return cls(args.config_path, args.config_name or "config", args.config_dir)


def _directory(flag: str, path: str) -> str:
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(full):
        raise ConfigError(flag, f"{path}: no such directory")
    return full


@contextmanager
def hydra_app(app: App) -> Iterator[Any]:
    """Hydra's application object over the app's search path, built as @hydra.main builds it (Hydra's private API:
    hydra-core is pinned), cleared again on exit (Hydra keeps one per process)."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    primary = _directory("--config-path", app.config_path) if app.config_path else str(CONF_DIR)
    search = create_config_search_path(f"file://{primary}")
    anchor = SearchPathQuery(provider="schema")
    if app.config_path:  # a user's primary directory: the shipped groups (model, trainer, ...) stay reachable
        search.prepend("orchestrator", f"file://{CONF_DIR}", anchor=anchor)
    if app.config_dir:  # where @hydra.main puts it: after the primary directory
        search.prepend("command-line", f"file://{_directory('--config-dir', app.config_dir)}", anchor=anchor)
    version.setbase(None)  # this Hydra's own defaults (as @hydra.main(version_base=None)), not 1.1's compatibility
    GlobalHydra.instance().clear()
    try:
        yield Hydra.create_main_hydra2(task_name="orchestrator", config_search_path=search)
    finally:
        GlobalHydra.instance().clear()


def compose(overrides: list[str], app: App | None = None, run_mode: RunMode = RunMode.RUN,
            keep_hydra: bool = False) -> DictConfig:
    """The job config (without Hydra's own `hydra` node unless keep_hydra), interpolations resolved; MULTIRUN mode
    composes a sweep's base (its sweep overrides left out, as Hydra's sweeper does)."""
    app = app or App()
    try:
        with hydra_app(app) as hydra:
            cfg = hydra.compose_config(app.config_name, list(overrides), run_mode=run_mode, from_shell=False)
        if not keep_hydra:
            with open_dict(cfg):
                del cfg["hydra"]
            OmegaConf.resolve(cfg)
        return cfg
    except HydraException as err:
        raise hydra_error(err, overrides) from None
    except OmegaConfBaseException as err:
        raise _from_omegaconf(err) from None


def to_spec(cfg: DictConfig) -> RunSpec:
    if OmegaConf.get_type(cfg) is not RunSpec:  # a --config-name root that does not build on the schema
        raise ConfigError("--config-name", "the root config's defaults list must start with `config` (conf/config.yaml"
                          ") or `run_schema`; a job file is simpler: conf/experiment/ and +experiment=<name>")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(missing[0], "missing required value")
    try:
        spec: RunSpec = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise _from_omegaconf(err) from None
    for registry, name in ((JOBS, spec.job.kind), (MODELS, spec.model.name)):
        if name not in registry:
            registry.get(name)  # raises the ConfigError that lists the known names
    return spec
