"""Hydra composition of conf/ into a typed RunSpec; every failure becomes one ConfigError line."""

from __future__ import annotations

import re
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
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


def _from_hydra(err: HydraException, overrides: list[str]) -> ConfigError:
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
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ConfigError("config", first)


def compose(overrides: list[str]) -> DictConfig:
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        OmegaConf.resolve(cfg)
        return cfg
    except HydraException as err:
        raise _from_hydra(err, overrides) from None
    except OmegaConfBaseException as err:
        raise _from_omegaconf(err) from None


def to_spec(cfg: DictConfig) -> RunSpec:
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
