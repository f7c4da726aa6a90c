"""lm-evaluation-harness as an evaluator (`eval=lm_eval eval.tasks=[...]`): the harness's tasks on each model, in the
evaluate worker that holds it (on its GPU when it has one, in eval.dtype), through the harness's own HF model class:
`HFLM(pretrained=<the model the worker loaded>, tokenizer=<its tokenizer>)`, the harness's way to evaluate a model
already loaded (for a plain model directory the same scores as its `pretrained=<dir>`, tested). The worker loads a
quantized export as every evaluator sees it, dequantized by the project's loader: transformers' own load gets some
exports wrong (zero points, per-expert int8, gpt-oss: README, Serving the export). eval.compare_to's model is held
beside it. Offline: nothing is downloaded.

Tasks: names in the harness's registry (their datasets must already be in the workers' HF cache) or in the task YAMLs
of `eval.task_paths` (local or s3:// directories, read by the driver and shipped to the worker with their data). A
relative `dataset_kwargs.data_files` / `data_dir` (and a `dataset_path` that exists there) resolves against the
YAML's own directory, so `dataset_path: json` + `data_files: items.jsonl` beside the YAML works wherever the worker
runs; the datasets library's cache of such data stays beside the staged copy.

Metrics `lm_eval/<task>/<metric>` (`<metric>.<filter>` for a filter other than `none`; stderr included), against
eval.compare_to `<...>_delta`; each model's results JSON (the harness's, without samples) as the artifact
`eval/lm_eval/<model|compare_to>.json`."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core import storage
from core.errors import ConfigError

# set before the worker first imports the datasets library (which reads them once): nothing is downloaded
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
MAX_TASK_BYTES = 512 << 20  # eval.task_paths travel to the workers through Ray's object store
PATH_KEYS = ("data_files", "data_dir")  # dataset_kwargs entries that name local files


@dataclass
class Tasks:
    """What the worker runs: the requested names, the task directories' files (`<i>/<relative path>` -> bytes, i the
    index in eval.task_paths) and the models' tokenizer."""

    names: list[str]
    files: dict[str, bytes]
    registry: bool  # a name not found in eval.task_paths: the harness's own task index is needed too
    tokenizer: Any = None
    columns: list[str] = field(default_factory=list)  # the table's metric keys (set by summarize)


class _Function(str):
    """A `!function module.name` value of a task YAML, written back as it was."""


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    pass


_Loader.add_constructor("!function", lambda loader, node: _Function(loader.construct_scalar(node)))
_Dumper.add_representer(_Function, lambda dumper, value: dumper.represent_scalar("!function", str(value)))


def check(e: Any) -> None:
    """eval.* values alone (the evaluate job's static check, orchestrator/checks.py): tasks given, limit and
    num_fewshot in range."""
    if not e.tasks:
        raise ConfigError("eval.tasks", "no tasks: name the harness's tasks (e.g. eval.tasks=[arc_easy]) or those "
                          "of the task YAMLs in eval.task_paths")
    if len(set(e.tasks)) < len(e.tasks):
        raise ConfigError("eval.tasks", f"{list(e.tasks)}: a task is named twice")
    if e.limit is not None and e.limit < 1:
        raise ConfigError("eval.limit", f"{e.limit}: the number of items per task must be >= 1 (or null: all)")
    if e.num_fewshot is not None and e.num_fewshot < 0:
        raise ConfigError("eval.num_fewshot", f"{e.num_fewshot}: must be >= 0 (or null: each task's own)")


def read_task_files(paths: list[str]) -> dict[str, bytes]:
    """Every file of each eval.task_paths directory (hidden files and __pycache__ left out)."""
    files: dict[str, bytes] = {}
    for i, uri in enumerate(paths):
        root = storage.local_path(uri, field="eval.task_paths")
        if not root.is_dir():
            raise ConfigError("eval.task_paths", f"{uri}: not a directory (of task YAMLs and their data)")
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and not any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
                files[f"{i}/{rel.as_posix()}"] = path.read_bytes()
        if not any(name.startswith(f"{i}/") and name.endswith(".yaml") for name in files):
            raise ConfigError("eval.task_paths", f"{uri}: no task YAML (*.yaml) in it")
        if sum(map(len, files.values())) > MAX_TASK_BYTES:
            raise ConfigError("eval.task_paths", f"{uri}: over {MAX_TASK_BYTES >> 20} MiB of task files")
    return files


def _under(value: Any, base: Path) -> Any:
    """Relative local paths (in a str, list or dict) made absolute under `base`; URLs and absolute paths kept."""
    if isinstance(value, str):
        return value if "://" in value or Path(value).is_absolute() else str(base / value)
    if isinstance(value, list):
        return [_under(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _under(v, base) for k, v in value.items()}
    return value


def _resolve_data_paths(path: Path, final_dir: Path, cache_dir: Path) -> None:
    """Rewrite one staged task YAML so that its local data paths name files under `final_dir` (its directory once
    the staging is in place), their datasets cache in `cache_dir`."""
    text = path.read_text()
    if not any(key in text for key in (*PATH_KEYS, "dataset_path")):
        return
    cfg = yaml.load(text, Loader=_Loader)  # a SafeLoader that knows the harness's one tag
    if not isinstance(cfg, dict):
        return
    kwargs = cfg.get("dataset_kwargs") if isinstance(cfg.get("dataset_kwargs"), dict) else {}
    changed = [key for key in PATH_KEYS if key in kwargs]
    for key in changed:
        kwargs[key] = _under(kwargs[key], final_dir)
    local = cfg.get("dataset_path")
    if isinstance(local, str) and not Path(local).is_absolute() and (path.parent / local).exists():
        cfg["dataset_path"] = str(final_dir / local)
        changed.append("dataset_path")
    if changed:
        kwargs.setdefault("cache_dir", str(cache_dir))
        cfg["dataset_kwargs"] = kwargs
        path.write_text(yaml.dump(cfg, Dumper=_Dumper, sort_keys=False, allow_unicode=True))


def stage(files: dict[str, bytes]) -> list[Path]:
    """The task directories on this node, under the download cache, by content (the same files keep one path, so
    the datasets library's cache of their data is found again); data paths resolved (`_resolve_data_paths`)."""
    if not files:
        return []
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    root = storage.cache_root() / "lm_eval_tasks" / digest.hexdigest()[:16]
    if not root.is_dir():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root.parent))
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        for path in tmp.rglob("*.yaml"):
            _resolve_data_paths(path, root / path.parent.relative_to(tmp), root / ".datasets")
        try:
            os.rename(tmp, root)
        except OSError:  # staged by another actor of this node meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return sorted({root / name.split("/", 1)[0] for name in files})


def task_manager(dirs: list[Path], registry: bool) -> Any:
    """The harness's task index over `dirs` (and its own tasks with `registry`: about 6 s to build)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(d) for d in dirs] or None, include_defaults=registry)


def _metric_name(task: str, key: str) -> str:
    metric, _, filt = key.partition(",")
    name = f"lm_eval/{task}/{metric}" + (f".{filt}" if filt and filt != "none" else "")
    return re.sub(r"[^\w\-./ ]", "_", name)  # what MLflow takes in a metric name


def metrics_of(results: dict[str, Any]) -> dict[str, float]:
    """Every numeric task and group metric of the harness's results (a stderr it could not compute left out)."""
    out = {}
    for task, values in results.get("results", {}).items():
        for key, value in values.items():
            if "," in key and isinstance(value, int | float) and not isinstance(value, bool):
                if math.isfinite(value) or "_stderr" not in key:
                    out[_metric_name(task, key)] = float(value)
    return out


class LmEval:
    """The evaluator of eval.metric=lm_eval (jobs/evaluate/registry.py): one worker, a model at a time."""

    def prepare(self, spec: Any, tokenizer: Any, compare_cfg: Any | None) -> Tasks:
        """Driver: read eval.task_paths, check every name against their YAMLs and (only if needed) the registry."""
        e = spec.eval
        files = read_task_files(list(e.task_paths))
        dirs = stage(files)
        known = set(task_manager(dirs, False).all_tasks) if dirs else set()
        registry = any(name not in known for name in e.tasks)
        if registry:
            known = set(task_manager(dirs, True).all_tasks)
            unknown = [name for name in e.tasks if name not in known]
            if unknown:
                where = "the harness's registry" + (" or eval.task_paths" if dirs else "")
                raise ConfigError("eval.tasks", f"{unknown[0]}: no such task, group or tag in {where}")
        return Tasks(list(e.tasks), files, registry, tokenizer)

    def score(self, model: Any, tasks: Tasks, e: Any) -> dict[str, Any]:
        """In the worker: the harness's simple_evaluate on `model`; its results as plain JSON data."""
        os.environ.update(OFFLINE)
        from unittest import mock

        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.utils import handle_non_serializable

        with _without_bars():
            hf_log = logging.getLogger("lm_eval.models.huggingface")
            level = hf_log.level
            hf_log.setLevel(logging.ERROR)  # its warning that a loaded model (not a path) was handed over
            try:
                lm = HFLM(pretrained=model, tokenizer=tasks.tokenizer, batch_size=e.batch_size)
            finally:
                hf_log.setLevel(level)
            try:
                # the harness records the git commit of the process's cwd (a Ray worker's: none, and `git` says
                # "fatal" on stderr); the job's MLflow run records the project's
                with mock.patch("lm_eval.evaluator.get_git_commit_hash", return_value=None):
                    results = simple_evaluate(lm, tasks=list(tasks.names), num_fewshot=e.num_fewshot, limit=e.limit,
                                              batch_size=e.batch_size, log_samples=False,
                                              task_manager=task_manager(stage(tasks.files), tasks.registry))
            except ConnectionError as err:  # offline: a registry task's dataset not in the local cache
                raise ConfigError("eval.tasks", f"{err}: the job runs offline; put the dataset in the workers' HF "
                                  "cache (HF_HOME) or its files beside a task YAML in eval.task_paths") from None
        return {"results": json.loads(json.dumps(results, default=handle_non_serializable))}

    def summarize(self, raw: dict[str, Any], tasks: Tasks, tokenizer: Any) -> dict[str, float]:
        metrics = metrics_of(raw["results"])
        asked = [k for k in metrics if "_stderr" not in k and k.split("/")[1] in tasks.names]
        tasks.columns = list(dict.fromkeys([*tasks.columns, *asked]))
        return metrics

    def columns(self, tasks: Tasks) -> list[tuple[str, str, str]]:
        return [(key.removeprefix("lm_eval/"), key, ".4f") for key in tasks.columns]

    def compare(self, model: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
        return {f"{k}_delta": v - reference[k] for k, v in model.items() if k in reference and "_stderr" not in k}

    def artifacts(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Driver: JSON artifacts under eval/: the harness's results of each model."""
        return {f"lm_eval/{label}.json": r["results"] for label, r in raw.items()}


LM_EVAL = LmEval()


@contextmanager
def _without_bars() -> Iterator[None]:
    """Python-level stderr kept back while it runs and written out again without progress-bar frames (the lines tqdm
    starts with a carriage return): the harness draws its bars whatever the environment says."""
    kept = io.StringIO()
    try:
        with redirect_stderr(kept):
            yield
    finally:
        sys.stderr.write("".join(line for line in re.split(r"(?<=\n)", kept.getvalue()) if "\r" not in line))
