"""job=inspect through the real CLI (in process): printed and logged tree, parameter table, counts and groups,
checked against the real (CPU, random-init) transformers model's named_parameters; no Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.models import MODELS, ModelConfig
from tests.conftest import mlflow_run, run_id_of
from tests.core.models.test_groups import CAUSAL, LLAVA, LLAVA_NEXT, expected_counts


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inspect") / "runs"


def _real(name: str, path: str | None = None) -> torch.nn.Module:
    source, cfg = MODELS.get(name), ModelConfig(name=name, path=path)
    return source.build(cfg, source.hf_config(cfg), torch.float32)


def _inspect(cli_in_process, storage: Path, *args: str) -> tuple[dict, str, str]:
    import ray

    result = cli_in_process(["job=inspect", *args], storage)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not ray.is_initialized()  # the meta-device model needs no cluster
    run_id = run_id_of(result.stdout)
    assert mlflow_run(storage, run_id).info.status == "FINISHED"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    local = Path(client.download_artifacts(run_id, "inspect", str(storage.parent / run_id)))
    assert {p.name for p in local.iterdir()} == {"tree.txt", "parameters.md", "groups.md", "model.json"}
    return json.loads((local / "model.json").read_text()), result.stdout, run_id


def _check_against(info: dict, model: torch.nn.Module, prefixes: dict, stdout: str) -> None:
    expected = expected_counts(model, prefixes)
    assert {g: c["params"] for g, c in info["groups"].items()} == expected
    assert info["total_params"] == sum(p.numel() for p in model.parameters()) == sum(expected.values())
    assert [(p["name"], p["shape"]) for p in info["parameters"]] == [(n, list(p.shape))
                                                                      for n, p in model.named_parameters()]
    assert str(model) in stdout  # the module tree as print(model) shows it
    for name, param in model.named_parameters():
        assert f"| {name} | {tuple(param.shape)} |" in stdout


def test_inspect_llava_tiny(cli_in_process, storage: Path) -> None:
    info, stdout, run_id = _inspect(cli_in_process, storage, "model=llava_tiny")
    model = _real("llava_tiny")
    _check_against(info, model, LLAVA, stdout)
    assert info["class"] == "LlavaForConditionalGeneration" and info["tied"] == {"lm_head": "embeddings"}
    assert info["trainable_params"] == info["total_params"]
    assert "| lm_head (tied to embeddings) | 0 | 0 | 0 |" in stdout
    params = mlflow_run(storage, run_id).data.params
    assert params["model.total_params"] == str(info["total_params"])
    assert params["model.groups.vision"] == str(info["groups"]["vision"]["params"])


def test_inspect_llava_next_small(cli_in_process, storage: Path) -> None:
    info, stdout, _ = _inspect(cli_in_process, storage, "model=llava_next_small")
    _check_against(info, _real("llava_next_small"), LLAVA_NEXT, stdout)
    assert info["class"] == "LlavaNextForConditionalGeneration" and info["groups"]["lm_head"]["params"] > 0


def test_inspect_honours_freeze(cli_in_process, storage: Path) -> None:
    info, stdout, _ = _inspect(cli_in_process, storage, "model=llava_tiny", "model.freeze=[vision,projector]")
    frozen = info["groups"]["vision"]["params"] + info["groups"]["projector"]["params"]
    assert info["trainable_params"] == info["total_params"] - frozen
    assert info["groups"]["vision"]["trainable"] == info["groups"]["projector"]["trainable"] == 0
    assert info["groups"]["language"]["trainable"] == info["groups"]["language"]["params"]
    frozen_prefixes = ("model.vision_tower.", "model.multi_modal_projector.")
    assert not any(n.startswith(frozen_prefixes) for n in info["trainable_names"])
    assert f"{frozen:,} params) frozen" in stdout


def test_inspect_model_hf_vlm_directory(cli_in_process, storage: Path, tmp_path: Path) -> None:
    source, cfg = MODELS.get("llava_tiny"), ModelConfig(name="llava_tiny")
    _real("llava_tiny").save_pretrained(tmp_path / "vlm")
    source.processor(cfg).save_pretrained(str(tmp_path / "vlm"))
    info, stdout, _ = _inspect(cli_in_process, storage, "model=hf", f"model.path={tmp_path / 'vlm'}")
    _check_against(info, _real("hf", str(tmp_path / "vlm")), LLAVA, stdout)


def test_inspect_text_model(cli_in_process, storage: Path) -> None:
    info, stdout, _ = _inspect(cli_in_process, storage, "model=qwen3_tiny")
    _check_against(info, _real("qwen3_tiny"), CAUSAL, stdout)
    assert info["groups"]["vision"]["params"] == 0 and info["class"] == "Qwen3ForCausalLM"


def test_inspect_bad_freeze_fails_with_one_line(cli_in_process, storage: Path) -> None:
    result = cli_in_process(["job=inspect", "model=qwen3_tiny", "model.freeze=[projector]"], storage)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: config error: model.freeze: 'projector': matches no parameter of " \
        "Qwen3ForCausalLM (names look like 'model.embed_tokens.weight'; job=inspect lists them)"
    run = mlflow_run(storage, run_id_of(result.stdout))
    assert run.info.status == "FAILED" and "model.freeze" in run.data.tags["error"]
