"""The newest finished SFT export, found through MLflow: the nightly jobs' input.

    python -m orchestrator.latest [--tracking-uri URI] [--experiment NAME] [--tag KEY=VALUE ...] [--kind sft]
    python -m orchestrator.latest [options] -- job=pipeline pipeline.stages=[sensitivity,quantize,evaluate] ...

Searches the experiment for FINISHED runs of the job kind (tag `job.kind`, default sft) carrying every --tag, newest
end time first, and takes the first whose export (tag `export_uri`) is published (COMPLETE). Alone it prints that
URI. With `--` it runs the job given after it (the same error boundary and exit codes as `python -m orchestrator`)
on that export: `model=hf model.path=<export> job.parent_run=<its run>`, and `job.name=<--name-prefix>-<run id>`
unless given, so the same export is never processed twice (a rerun resumes or skips its finished stages).
The tracking store: --tracking-uri, else $MLFLOW_TRACKING_URI, else the default store under runs/. No export: one
`error:` line, exit 2."""

from __future__ import annotations

import argparse
import os
import sys

from core import storage
from core.errors import ConfigError, UserError
from core.redact import Redactor, redact_std_streams

SEARCH_PAGE = 50


def find_latest(uri: str, experiment: str, kind: str = "sft", tags: dict[str, str] | None = None) -> tuple[str, str]:
    """(run id, export URI) of the newest FINISHED run of `kind` with `tags` whose export is published."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ConfigError("--experiment", f"no experiment {experiment!r} in the tracking store")
    clauses = [f"tags.`job.kind` = '{kind}'", "attributes.status = 'FINISHED'"]
    clauses += [f"tags.`{key}` = '{value}'" for key, value in (tags or {}).items()]  # _tags refused quotes
    token = None
    while True:
        page = client.search_runs([found.experiment_id], " and ".join(clauses), max_results=SEARCH_PAGE,
                                  order_by=["attributes.end_time DESC"], page_token=token)
        for run in page:
            export = run.data.tags.get("export_uri")
            if export and storage.is_published(export):
                return run.info.run_id, export
        token = page.token
        if not token:
            break
    wanted = ", ".join([f"job.kind={kind}", *(f"{k}={v}" for k, v in (tags or {}).items())])
    raise UserError(f"no finished {kind} run with a published export in experiment {experiment!r} ({wanted})")


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str] | None]:
    job = None
    if "--" in argv:
        cut = argv.index("--")
        argv, job = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="python -m orchestrator.latest", description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--experiment", default="orchestrator")
    parser.add_argument("--kind", default="sft")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--storage", default="runs", help="where the default MLflow store is (job.storage)")
    parser.add_argument("--name-prefix", default="nightly")
    return parser.parse_args(argv), job


def _tags(pairs: list[str]) -> dict[str, str]:
    for pair in pairs:
        if "=" not in pair or any(q in pair for q in "'`"):
            raise ConfigError("--tag", f"KEY=VALUE without quotes (got {pair!r})")
    return dict(p.split("=", 1) for p in pairs)


def _store(args: argparse.Namespace) -> str:
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    path = storage.scratch_dir(storage.absolute(args.storage)) / "mlflow.db"
    if not path.is_file():
        raise ConfigError("--storage", f"no MLflow store at {path} (give --tracking-uri or MLFLOW_TRACKING_URI)")
    return f"sqlite:///{path}"


def main(argv: list[str] | None = None) -> int:
    redact_std_streams(Redactor())
    args, job = _parse(sys.argv[1:] if argv is None else argv)
    try:
        run_id, export = find_latest(_store(args), args.experiment, args.kind, _tags(args.tag))
    except Exception as err:  # noqa: BLE001  the CLI's error boundary: one line for the user's causes
        from orchestrator.failures import as_user_error

        user_error = as_user_error(err)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr, flush=True)
        return user_error.exit_code
    if job is None:
        print(export, flush=True)
        return 0
    from orchestrator.cli import main as run

    named = any(o.startswith("job.name=") for o in job)
    print(f"latest {args.kind} export: {export} (run {run_id})", flush=True)
    return run([*job, "model=hf", f"model.path={export}", f"job.parent_run={run_id}",
                *([] if named else [f"job.name={args.name_prefix}-{run_id}"])])


if __name__ == "__main__":
    sys.exit(main())
