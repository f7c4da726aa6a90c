"""SIGTERM and SIGINT to a quantize job on its embedded cluster: it stops after the block in progress, exits
143/130, its run KILLED naming the signal, no Ray process left; reruns resume and the export is bit-identical
to the uninterrupted job's."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from jobs.quantize import checkpoint
from tests.conftest import mlflow_run, run_cli, run_id_of, signal_and_expect, start_cli
from tests.jobs.conftest import QUANT_ALGOS, TINY_QUANT

GPTQ_2W = [*QUANT_ALGOS["gptq"], "quant.num_workers=2"]
NAME = "gptq-signalled"


def _interrupted_run(storage: Path, log: Path, signum: int, after_block: int) -> int:
    """Start the job (embedded Ray), signal it once block `after_block` is published; the blocks done at exit."""
    proc, log = start_cli([*TINY_QUANT, *GPTQ_2W, f"job.name={NAME}", f"job.storage={storage}"], log, {})
    marker = checkpoint.block_dir(storage / NAME / "blocks", after_block)
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.time() < deadline
        time.sleep(0.05)
    output = signal_and_expect(proc, log, signum)
    run = mlflow_run(storage, run_id_of(output))
    assert run.info.status == "KILLED" and run.data.tags["error"] == f"interrupted by {signal.Signals(signum).name}"
    assert not (storage / NAME / "export").exists()
    return checkpoint.finished_blocks(storage / NAME / "blocks")


def test_signals_stop_after_the_block_and_the_reruns_resume_bit_identically(quantize_run, quant_storage: Path,
                                                                            ray_head, tmp_path: Path) -> None:
    quantize_run("gptq-2w", *GPTQ_2W)
    quantize_run.wait_all()  # alone: the signals must land between blocks
    done = _interrupted_run(quant_storage, tmp_path / "term.log", signal.SIGTERM, after_block=0)
    assert 1 <= done < 4, done  # the block in progress when it came was finished (and checkpointed), no more
    done_after = _interrupted_run(quant_storage, tmp_path / "int.log", signal.SIGINT, after_block=done)
    assert done_after > done
    result = run_cli([*TINY_QUANT, *GPTQ_2W, *ray_head.args, f"job.name={NAME}"], quant_storage, env=ray_head.env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert f"resumed_at: {done_after}" in result.stdout
    assert mlflow_run(quant_storage, run_id_of(result.stdout)).data.tags["resumed_from_run"]
    files = sorted((quant_storage / "gptq-2w" / "export").iterdir())
    for path in files:
        if path.name != "quant_info.json":
            assert (quant_storage / NAME / "export" / path.name).read_bytes() == path.read_bytes(), path.name
