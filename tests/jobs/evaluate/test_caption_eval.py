"""eval=caption: caption loss and greedy-caption accuracy of the shapes-trained llava_tiny export on held-out
images, against its untrained initialisation as eval.compare_to; metric arithmetic; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.models import MODELS, ModelConfig
from core.models.byte_tokenizer import byte_tokenizer
from jobs.evaluate.caption import CAPTION, Caption, CaptionSet
from tests.conftest import mlflow_run, run_cli, run_id_of
from tests.jobs.vlm_shapes import SHAPES_OVERRIDES
from tests.orchestrator.test_bad_data import _assert_failed

# Measured on the shipped held-out set (96 images, every colour x shape 4 times) with the export of
# tests/jobs/vlm_shapes.py (100 steps): colour+shape 0.781 (colour 1.000, shape 0.781, exact match 0.781,
# caption NLL 0.043 vs 5.60 untrained), identical in two runs. The bounds leave room for drift of CPU
# kernels; the untrained initialisation names neither colour nor shape.
MIN_KEYWORD_ACCURACY = 0.7
MIN_COLOUR_ACCURACY = 0.95
KEYWORDS = {"colour": ["red", "green", "blue"], "shape": ["circle", "square"]}


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SFT run's starting point (trainer.seed=0: rank 0's build, which ZeRO-3 starts from), with processor."""
    source, cfg = MODELS.get("llava_tiny"), ModelConfig(name="llava_tiny", overrides=SHAPES_OVERRIDES)
    torch.manual_seed(0)
    model = source.build(cfg, source.hf_config(cfg), torch.float32)
    out = tmp_path_factory.mktemp("llava-init")
    model.save_pretrained(out)
    source.processor(cfg).save_pretrained(str(out))
    return out


def test_trained_vlm_captions_held_out_images(llava_shapes, init_dir: Path, ray_head) -> None:
    storage = llava_shapes.storage
    # two workers, each holding both models, share the 96 chats (one would score both models on one core)
    result = run_cli(["job=evaluate", "eval=caption", "model=hf", f"model.path={llava_shapes.export}",
                      f"eval.compare_to={init_dir}", "eval.num_workers=2", *ray_head.args], storage, env=ray_head.env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "| model | path | caption nll | exact match | colour+shape acc | colour acc | shape acc | samples |" \
        in result.stdout
    run = mlflow_run(storage, run_id_of(result.stdout))
    m = run.data.metrics
    print(json.dumps({"sft_wall_s": round(llava_shapes.wall_s, 1), **m}, indent=1))  # the numbers in the report
    assert run.info.status == "FINISHED" and m["samples"] == m["compare_to.samples"] == 96
    assert m["keyword_accuracy"] >= MIN_KEYWORD_ACCURACY and m["colour_accuracy"] >= MIN_COLOUR_ACCURACY, m
    assert m["exact_match"] <= m["keyword_accuracy"] <= min(m["colour_accuracy"], m["shape_accuracy"])
    assert m["compare_to.keyword_accuracy"] == 0.0 and m["caption_nll"] < 0.2 * m["compare_to.caption_nll"]
    assert m["keyword_accuracy_delta"] == m["keyword_accuracy"] and m["caption_nll_ratio"] < 0.2
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    assert "eval/caption.md" in {a.path for a in client.list_artifacts(run.info.run_id, "eval")}


def _set(references: list[str]) -> CaptionSet:
    items = [Caption(None, None, 0, [], ref) for ref in references]
    return CaptionSet(items, eos_id=0, pad_id=0, keywords=KEYWORDS)


def test_caption_metrics_from_decoded_greedy_captions() -> None:
    tokenizer = byte_tokenizer()
    refs = ["A red circle.", "A blue square.", "A green circle.", "A red square."]
    outs = ["A red circle.", "A blue circle.", "a green circle", "A blue square. A red square."]
    generated = [tokenizer.encode(o + "<|im_end|>", add_special_tokens=False) for o in outs]
    raw = {"nll": 6.0, "tokens": 4, "generated": generated}
    m = CAPTION.summarize(raw, _set(refs), tokenizer)
    # exact: 1 of 4; colour right: 1, 2, 3 (case-insensitive); shape right: 1, 3; both: 1, 3;
    # the 4th names two colours: not the reference's one colour
    assert m == {"caption_nll": 1.5, "exact_match": 0.25, "colour_accuracy": 0.75, "shape_accuracy": 0.5,
                 "keyword_accuracy": 0.5, "samples": 4.0, "caption_tokens": 4.0}
    other = {**m, "caption_nll": 3.0, "keyword_accuracy": 0.25}
    assert CAPTION.compare(m, other)["caption_nll_ratio"] == 0.5
    assert CAPTION.compare(m, other)["keyword_accuracy_delta"] == 0.25
    headers = [h for h, _, _ in CAPTION.columns(_set(refs))]
    assert headers == ["caption nll", "exact match", "colour+shape acc", "colour acc", "shape acc", "samples"]


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-caption") / "runs"


def test_caption_eval_needs_a_vlm(storage: Path, cli_in_process) -> None:
    result = cli_in_process(["job=evaluate", "eval=caption", "model=qwen3_tiny"], storage)
    _assert_failed(result, storage, "config error: model: eval=caption needs a vision-language model")


def test_caption_eval_needs_a_final_assistant_caption(tmp_path: Path, storage: Path, cli_in_process) -> None:
    path = tmp_path / "heldout.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Describe nothing."}]}) + "\n")
    result = cli_in_process(["job=evaluate", "eval=caption", "model=llava_tiny", f"eval.path={path}"], storage)
    _assert_failed(result, storage, f"data error: {path}:1: the last message must be the assistant's caption")


def test_caption_eval_missing_image_names_file_line_and_image(tmp_path: Path, storage: Path,
                                                              cli_in_process) -> None:
    path = tmp_path / "heldout.jsonl"
    image = {"type": "image_url", "image_url": {"url": "gone.png"}}
    path.write_text(json.dumps({"messages": [{"role": "user", "content": [image]},
                                             {"role": "assistant", "content": "A red circle."}]}) + "\n")
    result = cli_in_process(["job=evaluate", "eval=caption", "model=llava_tiny", f"eval.path={path}"], storage)
    _assert_failed(result, storage, f"data error: {path}:1: image {tmp_path}/gone.png: no such file")
