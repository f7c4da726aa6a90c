"""A quantize job asking more than the cluster has fails at placement with one line (core.cluster.check_fits)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import ray

from tests.conftest import mlflow_run, run_id_of
from tests.jobs.conftest import TINY_QUANT

pytestmark = pytest.mark.e2e  # a real embedded Ray cluster (tests/conftest.py: the end-to-end lane)


def test_a_job_asking_more_than_the_cluster_fails_instead_of_hanging(storage: Path, cli_in_process) -> None:
    """Before the check, quant.cpus_per_worker=4 on this 2-core machine left the job waiting forever."""
    result = cli_in_process([*TINY_QUANT, "quant=rtn", "quant.cpus_per_worker=4", "cluster.num_cpus=2",
                             f"cluster.tmp_dir=/tmp/orch-fits-cli-{os.getpid()}"], storage)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: config error: quant.cpus_per_worker: 1 worker(s) of 4 CPU + 0 GPU each do not fit "
                      "the cluster's nodes (2 CPU + 0 GPU); Ray would wait for them forever"], result.stderr[-2000:]
    assert not ray.is_initialized()  # the embedded cluster was shut down
    run = mlflow_run(storage, run_id_of(result.stdout))
    assert run.info.status == "FAILED" and "quant.cpus_per_worker" in run.data.tags["error"]
