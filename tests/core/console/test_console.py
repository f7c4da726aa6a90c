"""core/console: what reaches the console and what the job log keeps, fed the lines a real SFT job's Ray workers
and actors printed (copied from a run on this machine), without Ray."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from core import console
from core.console import joblog, workers
from core.console.config import LogConfig
from core.redact import Redactor

STEP = "step {n}/3 loss={loss} lr=1.000e-03 grad_norm=6.544 tokens=1945 tgs=776 tgs_e2e=525 mfu=n/a data_time=0.000s " \
       "step_time=1.253s rss=1.19GiB"
START_UP = [  # (actor, is_err, line): Ray Train's and DeepSpeed's narration of a job's start
    ("TrainController", True, "Requesting resources: {'CPU': 1.0} * 2"),
    ("TrainController", True, "[2026-12-07 11:00:17,595 E 12775 12812] core_worker.cc:2465: Actor with class name: "
     "'PreemptionWatcher' and ID: '4b81' has constructor arguments in the object store and max_restarts > 0."),
    ("TrainController", True, "- (ip=192.0.2.2, pid=12889) world_rank=0, local_rank=0, node_rank=0"),
    ("RayTrainWorker", True, "Setting up process group for: env:// [rank=0, world_size=2]"),
    ("RayTrainWorker", False, "[2026-12-07 11:00:21,652] [WARNING] [real_accelerator.py:213:get_accelerator] Setting "
     "accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."),
    ("RayTrainWorker", False, "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully"),
    ("PlacementGroupCleaner", True, "Exception in thread PlacementGroupCleanerMonitor:"),
    ("PlacementGroupCleaner", True, "ConnectionError: Found multiple active Ray instances: {'192.0.2.2:48123'}."),
    ("ScoringWorker", True, "Loading weights: 100%|██████████| 35/35 [00:00<00:00, 20005.54it/s]"),
]
ERROR = [  # a worker's own failure: every line of it shown
    ("RayTrainWorker", True, "Traceback (most recent call last):"),
    ("RayTrainWorker", True, '  File "/work/main/jobs/sft/worker.py", line 240, in train_loop'),
    ("RayTrainWorker", True, "ValueError: the batch is empty"),
]


def _batch(actor: str, is_err: bool, line: str, pid: int = 12889) -> dict:
    return {"pid": pid, "actor_name": actor, "is_err": is_err, "lines": [line], "ip": "192.0.2.2",
            "localhost": "192.0.2.2"}


@pytest.fixture
def job_log(tmp_path: Path):
    """The console set up as a job's (text), one job log open; set back to the defaults afterwards."""
    console.setup(Redactor())
    with console.job_log(tmp_path / "logs" / "job.log"):
        yield tmp_path / "logs" / "job.log"
    console.setup(Redactor())


def test_start_up_lines_go_to_the_job_log_only_and_errors_to_the_console(job_log: Path, capsys) -> None:
    for actor, is_err, line in START_UP + ERROR:
        workers.on_lines(_batch(actor, is_err, line))
    workers.on_lines(_batch("RayTrainWorker", False, "model Qwen3ForCausalLM: 9,574,272 params"))
    workers.on_lines(_batch("ScoringWorker", True, "\rLoading weights:   0%|    | 0/35\rLoading weights: 100%|"))
    shown = capsys.readouterr()
    assert "model Qwen3ForCausalLM" in shown.out and "(RayTrainWorker pid=12889)" in shown.out
    for _, _, line in START_UP:
        assert line not in shown.out + shown.err, line
    for _, _, line in ERROR:
        assert f"(RayTrainWorker pid=12889) {line}" in shown.err
    kept = job_log.read_text()
    for actor, _, line in START_UP + ERROR:
        assert f"({actor} pid=12889) {line}" in kept


def test_verbose_shows_the_start_up_lines(job_log: Path, capsys) -> None:
    console.setup(Redactor(), LogConfig(verbose=True))
    for actor, is_err, line in START_UP:
        workers.on_lines(_batch(actor, is_err, line))
    shown = capsys.readouterr()
    assert all(line in shown.out + shown.err for _, _, line in START_UP)


def test_step_lines_drive_a_bar_and_stay_in_the_job_log(job_log: Path, capsys) -> None:
    with console.progress(r"step (?P<done>\d+)/(?P<total>\d+) ", "sft", "step"):
        for n, loss in ((1, 5.77), (2, 4.24), (3, 3.44)):
            workers.on_lines(_batch("RayTrainWorker", False, STEP.format(n=n, loss=loss)))
    shown = capsys.readouterr()
    assert "step 1/3" not in shown.out and "sft: 100%" in shown.err and "3/3" in shown.err and "loss=3.44" in shown.err
    assert job_log.read_text().count("(RayTrainWorker pid=12889) step ") == 3


def test_the_bar_waits_a_moment_for_the_last_line(job_log: Path, capsys) -> None:
    """The work is done before Ray has forwarded its last line: the bar still ends at 100%; a later line of a closed
    bar stays off the console."""
    import threading

    late = threading.Timer(0.3, workers.on_lines, [_batch("ScoringWorker", False, "scored 2/2 batches")])
    with console.progress(r"scored (?P<done>\d+)/(?P<total>\d+) batches", "score", "batch", postfix=()):
        workers.on_lines(_batch("ScoringWorker", False, "scored 1/2 batches"))
        late.start()
    workers.on_lines(_batch("ScoringWorker", False, "scored 2/2 batches"))  # a straggler
    shown = capsys.readouterr()
    assert "score: 100%" in shown.err and "scored" not in shown.out


def test_json_format(tmp_path: Path, capsys) -> None:
    console.setup(Redactor(), LogConfig(format="json"))
    try:
        with console.job_log(tmp_path / "job.log"), console.progress(r"step (?P<done>\d+)/(?P<total>\d+) ", "sft",
                                                                    "step"):
            workers.on_lines(_batch("RayTrainWorker", False, STEP.format(n=2, loss=4.24)))
            workers.on_lines(_batch("RayTrainWorker", True, "Traceback (most recent call last):"))
            logging.getLogger("jobs.sft").info("data: %d rows", 209)
            print("MLflow run id: abc  (tracking: sqlite:///x)")
            console.result({"final_loss": 1.5, "export": "/x"}, "abc")
    finally:
        console.setup(Redactor())
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    progress, error, record, printed, result = events
    assert progress["event"] == "progress" and progress["done"] == 2 and progress["total"] == 3
    assert progress["loss"] == 4.24 and progress["tgs"] == 776 and progress["step_time"] == 1.253
    assert error["level"] == "ERROR" and error["source"] == "(RayTrainWorker pid=12889)"
    assert record["logger"] == "jobs.sft" and record["msg"] == "data: 209 rows"
    assert printed["msg"] == "MLflow run id: abc  (tracking: sqlite:///x)"
    assert result == {"ts": result["ts"], "event": "result", "status": "FINISHED", "run_id": "abc",
                      "summary": {"final_loss": 1.5, "export": "/x"}}


def test_rays_log_records_reach_the_console_at_error_only(job_log: Path, capsys) -> None:
    workers.adopt_ray_loggers()
    logging.getLogger("ray._private.worker").info("Started a local Ray instance.")
    logging.getLogger("ray.train").error("Training failed")
    shown = capsys.readouterr().out
    assert "Started a local Ray instance" not in shown and "Training failed" in shown
    assert "INFO ray._private.worker: Started a local Ray instance." in job_log.read_text()


def test_the_job_log_keeps_what_came_before_it_opened_and_the_error_that_ended_it(tmp_path: Path) -> None:
    class Run:
        run_id, uploaded = "r1", None

        def log_artifacts(self, directory: Path, path: str) -> None:
            self.uploaded = (Path(directory), path)

    console.setup(Redactor())
    workers.on_lines(_batch("Quantizer", False, "before the job's directory was known", pid=7))
    run, path = Run(), tmp_path / "logs" / "job.log"
    with pytest.raises(ValueError), console.job_log(path) as log_file:
        log_file.upload_to(run)
        with console.job_log(tmp_path / "stage.log"):  # a job inside the job (a pipeline's stage): both get it
            logging.getLogger("jobs.x").warning("inside the stage")
        raise ValueError("token=hf_abcdefghijklmnopqrstuvwxyz")
    text = path.read_text()
    assert "(Quantizer pid=7) before the job's directory was known" in text and "inside the stage" in text
    assert "ERROR job: ended by ValueError" in text and "Traceback" in text
    assert "hf_abcdef" not in text  # the redactor's shapes
    assert "inside the stage" in (tmp_path / "stage.log").read_text()
    assert run.uploaded == (path.parent, "logs")
    joblog.write("after\n")  # no job log open: kept for the next
    assert "after" not in path.read_text()


def test_a_bad_log_format_is_one_line(cli_in_process, storage: Path) -> None:
    result = cli_in_process(["log.format=xml", "--cfg", "job"], storage)
    assert result.returncode == 2 and result.stderr == "error: config error: log.format: must be one of text, " \
                                                       "json (got 'xml')\n"
