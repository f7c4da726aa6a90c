"""eval=lm_eval in this process (no Ray): the shipped task (data/lm_eval: a JSONL of multiple-choice items read
through a task YAML) scored on a tiny model equals the loglikelihood argmax computed by hand and the harness's own
run on the model's directory; task directories staged with their data paths resolved; metric names; bad input as
one `error:` line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from jobs.evaluate.harness import LM_EVAL, Tasks, check, metrics_of, read_task_files, stage, task_manager
from jobs.evaluate.perplexity import load_model
from tests.conftest import mlflow_run, run_id_of
from tests.jobs.quantize_in_process import spec_of
from tests.orchestrator.test_fault_inputs import _one_error_line

TASKS = Path(__file__).resolve().parents[3] / "data" / "lm_eval"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-block qwen3_tiny directory (byte tokenizer)."""
    from core.models import MODELS, ModelConfig

    cfg = ModelConfig(name="qwen3_tiny", overrides={"num_hidden_layers": 1})
    source = MODELS.get("qwen3_tiny")
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("lm-eval-model") / "m"
    source.build(cfg, source.hf_config(cfg), torch.float32).save_pretrained(out)
    source.tokenizer(cfg).save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_CACHE", str(tmp_path / "cache"))  # the staged tasks and their datasets cache
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread in this process: beside the suite's Ray workers on 2 cores, the harness's run of the tiny
    model took 18 s on two threads and 1.5 s on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def hand_scored(model: torch.nn.Module, tokenizer, rows: list[dict]) -> dict[str, float]:
    """acc and acc_norm as the harness defines them for a multiple_choice task: the choice with the highest summed
    log-probability of `" " + choice` after the context (acc_norm: divided by the choice's length in characters)."""
    acc = acc_norm = 0
    for row in rows:
        context = tokenizer(row["context"])["input_ids"]
        lls = []
        for choice in row["choices"]:
            ids = tokenizer(row["context"] + " " + choice)["input_ids"]
            logp = model(input_ids=torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
            lls.append(sum(logp[i - 1, ids[i]].item() for i in range(len(context), len(ids))))
        acc += max(range(len(lls)), key=lls.__getitem__) == row["answer"]
        normed = [ll / len(choice) for ll, choice in zip(lls, row["choices"], strict=True)]
        acc_norm += max(range(len(lls)), key=normed.__getitem__) == row["answer"]
    return {"acc": acc / len(rows), "acc_norm": acc_norm / len(rows)}


def shipped_rows() -> list[dict]:
    return [json.loads(line) for line in (TASKS / "demo_facts.jsonl").read_text().splitlines()]


def harness_on_directory(path: Path, tasks: Tasks) -> dict:
    """The harness's own run, as a user would start it: its HF model class on the directory (pretrained=<dir>)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(path), dtype="float32", device="cpu", batch_size=3)
    return simple_evaluate(lm, tasks=tasks.names, task_manager=task_manager(stage(tasks.files), False),
                           log_samples=False)["results"]


def test_shipped_task_scores_as_computed_by_hand(model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    spec = spec_of(["job=evaluate", "model=hf", f"model.path={model_dir}", "eval=lm_eval",
                    f"eval.task_paths=[{TASKS}]", "eval.tasks=[demo_facts]", "eval.batch_size=5"], tmp_path)
    check(spec.eval)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tasks = LM_EVAL.prepare(spec, tokenizer, None)
    assert tasks.names == ["demo_facts"] and not tasks.registry  # found in eval.task_paths: no registry index
    model = load_model("hf", str(model_dir), {})  # as the evaluate worker loads it (float32 on the CPU here)
    with one_thread():  # as the worker (eval.threads=1)
        raw = LM_EVAL.score(model, tasks, spec.eval)
        expected = hand_scored(model, tokenizer, shipped_rows())
        own = harness_on_directory(model_dir, tasks)["demo_facts"]
    metrics = LM_EVAL.summarize(raw, tasks, tokenizer)
    assert metrics["lm_eval/demo_facts/acc"] == pytest.approx(expected["acc"], abs=1e-12), (metrics, expected)
    assert metrics["lm_eval/demo_facts/acc_norm"] == pytest.approx(expected["acc_norm"], abs=1e-12)
    assert 0 < expected["acc"] < 1 and expected["acc"] != expected["acc_norm"]  # the check can tell them apart
    assert (own["acc,none"], own["acc_norm,none"]) == (expected["acc"], expected["acc_norm"])
    assert {"lm_eval/demo_facts/acc_stderr", "lm_eval/demo_facts/acc_norm_stderr"} <= set(metrics)
    assert raw["results"]["n-samples"]["demo_facts"]["effective"] == len(shipped_rows())
    assert LM_EVAL.columns(tasks) == [("demo_facts/acc", "lm_eval/demo_facts/acc", ".4f"),
                                      ("demo_facts/acc_norm", "lm_eval/demo_facts/acc_norm", ".4f")]
    assert LM_EVAL.compare(metrics, metrics) == {"lm_eval/demo_facts/acc_delta": 0.0,
                                                 "lm_eval/demo_facts/acc_norm_delta": 0.0}
    assert LM_EVAL.artifacts({"model": raw}) == {"lm_eval/model.json": raw["results"]}


def test_task_directories_are_staged_with_their_data_paths_resolved(tmp_path: Path) -> None:
    src = tmp_path / "tasks"
    (src / "sub" / "data").mkdir(parents=True)
    (src / "sub" / "data" / "a.jsonl").write_text("{}\n")
    (src / "sub" / "t.yaml").write_text(
        "task: t\ndataset_path: data\ndataset_kwargs:\n  data_files:\n    test: [data/a.jsonl, /abs/b.jsonl]\n"
        "    train: hf://datasets/x/y.jsonl\nprocess_docs: !function utils.process\n")
    (src / "plain.yaml").write_text("task: plain\ndataset_path: json  # kept as written\n")
    (src / ".hidden.yaml").write_text("task: hidden\n")
    files = read_task_files([str(src)])
    assert sorted(files) == ["0/plain.yaml", "0/sub/data/a.jsonl", "0/sub/t.yaml"]
    (root,) = stage(files)
    assert stage(files) == [root]  # by content: the same path again
    text = (root / "sub" / "t.yaml").read_text()
    assert "!function 'utils.process'" in text or "!function utils.process" in text
    staged = yaml.load(text.replace("!function", ""), Loader=yaml.SafeLoader)
    kwargs = staged["dataset_kwargs"]
    assert kwargs["data_files"] == {"test": [str(root / "sub" / "data" / "a.jsonl"), "/abs/b.jsonl"],
                                    "train": "hf://datasets/x/y.jsonl"}
    assert staged["dataset_path"] == str(root / "sub" / "data")  # a local directory beside the YAML
    assert kwargs["cache_dir"] == str(root.parent / ".datasets")  # its arrow cache stays with the staged copy
    assert (root / "plain.yaml").read_text() == "task: plain\ndataset_path: json  # kept as written\n"


def test_metric_names_filters_and_missing_stderr() -> None:
    results = {"results": {
        "gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.1,
                  "exact_match,flexible-extract": 0.5, "exact_match_stderr,flexible-extract": "N/A"},
        "demo": {"acc,none": 1, "acc_stderr,none": float("nan"), "sample_len": 1}}}
    assert metrics_of(results) == {
        "lm_eval/gsm8k/exact_match.strict-match": 0.25, "lm_eval/gsm8k/exact_match_stderr.strict-match": 0.1,
        "lm_eval/gsm8k/exact_match.flexible-extract": 0.5, "lm_eval/demo/acc": 1.0}
    tasks = Tasks(["gsm8k"], {}, True)
    LM_EVAL.summarize({"results": results}, tasks, None)
    assert [key for _, key, _ in LM_EVAL.columns(tasks)] == ["lm_eval/gsm8k/exact_match.strict-match",
                                                              "lm_eval/gsm8k/exact_match.flexible-extract"]


@pytest.mark.parametrize(("override", "expected"), [
    ("eval.tasks=[]", "config error: eval.tasks: no tasks"),
    ("eval.tasks=[demo_facts,demo_facts]", "config error: eval.tasks: ['demo_facts', 'demo_facts']: a task is named"),
    ("eval.limit=0", "config error: eval.limit: 0: "),
    ("eval.num_fewshot=-1", "config error: eval.num_fewshot: -1: "),
])
def test_bad_values_fail_before_the_run(override: str, expected: str, model_dir: Path, tmp_path: Path,
                                        cli_in_process) -> None:
    args = ["job=evaluate", "model=hf", f"model.path={model_dir}", "eval=lm_eval", "eval.tasks=[demo_facts]",
            f"eval.task_paths=[{TASKS}]", override]
    for extra in (["--cfg", "job"], []):
        result = cli_in_process([*args, *extra], tmp_path / "runs")
        _one_error_line(result, expected)
        assert "MLflow run id" not in result.stdout


def test_unknown_task_and_missing_task_path_fail_in_the_run(model_dir: Path, tmp_path: Path, cli_in_process) -> None:
    storage = tmp_path / "runs"
    base = ["job=evaluate", "model=hf", f"model.path={model_dir}", "eval=lm_eval", "eval.tasks=[demo_facts]"]
    cases = {  # looked up in the harness's registry too (about 6 s: its task index) before it is refused
        f"eval.task_paths=[{TASKS}]": ("eval.tasks=[demo_facts,no_such_task]", "config error: eval.tasks: "
                                      "no_such_task: no such task, group or tag in the harness's registry or "
                                      "eval.task_paths"),
        f"eval.task_paths=[{tmp_path / 'gone'}]": ("eval.tasks=[demo_facts]", f"config error: eval.task_paths: "
                                                   f"{tmp_path / 'gone'}: no such file or directory"),
        f"eval.task_paths=[{TASKS / 'demo_facts.yaml'}]": ("eval.tasks=[demo_facts]", "config error: eval.task_paths"
                                                          f": {TASKS / 'demo_facts.yaml'}: not a directory"),
    }
    for paths, (tasks, expected) in cases.items():
        result = cli_in_process([*base, paths, tasks], storage)
        _one_error_line(result, expected)
        assert expected in mlflow_run(storage, run_id_of(result.stdout)).data.tags["error"]
