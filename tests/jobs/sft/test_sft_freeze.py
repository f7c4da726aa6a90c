"""model.freeze under real SFT: 2 DeepSpeed ZeRO-3 workers over gloo (every parameter partitioned), text data.

Frozen: the (tied) embeddings and language layer 0 by regex. The initial weights are rebuilt here from the
trainer seed (rank 0's build is what ZeRO-3 starts from) and compared with the export: frozen tensors
bit-identical, every trainable tensor changed. Bad entries fail before Ray with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.models import MODELS, ModelConfig
from tests.conftest import FAST_SFT, mlflow_run, run_cli, run_id_of

FREEZE = r'model.freeze=[embeddings,"re:^model\.layers\.0\."]'  # quoted: ^ is Hydra syntax
STEPS = 3


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sft-freeze") / "runs"


@pytest.fixture(scope="module")
def frozen_run(storage: Path) -> str:
    result = run_cli([*FAST_SFT, FREEZE, f"trainer.max_steps={STEPS}", "trainer.seed=0", "job.name=freeze"], storage)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return run_id_of(result.stdout)


def _initial() -> dict[str, torch.Tensor]:
    source, cfg = MODELS.get("qwen3_tiny"), ModelConfig(name="qwen3_tiny")
    torch.manual_seed(0)  # trainer.seed + rank 0
    model = source.build(cfg, source.hf_config(cfg), torch.float32)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_frozen_weights_are_bit_identical_and_trainable_ones_changed(frozen_run: str, storage: Path) -> None:
    from safetensors.torch import load_file

    exported = load_file(storage / "freeze" / "export" / "model.safetensors")
    initial = _initial()
    frozen = {n for n in initial if n == "model.embed_tokens.weight" or n.startswith("model.layers.0.")}
    assert len(frozen) == 12  # embeddings (= the tied lm_head) + layer 0's 11 tensors
    for name, start in initial.items():
        after = exported[name].float()
        if name in frozen:
            assert torch.equal(after, start), f"{name} changed though frozen"
        else:
            assert not torch.equal(after, start), f"{name} did not train"
    assert "lm_head.weight" not in exported or torch.equal(exported["lm_head.weight"].float(),
                                                           initial["model.embed_tokens.weight"])


def test_trainable_names_and_counts_are_logged(frozen_run: str, storage: Path) -> None:
    from mlflow.tracking import MlflowClient

    initial = _initial()
    frozen = {n for n in initial if n == "model.embed_tokens.weight" or n.startswith("model.layers.0.")}
    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    info = json.loads(Path(client.download_artifacts(frozen_run, "model/parameters.json", str(storage.parent)))
                      .read_text())
    assert info["trainable_names"] == [n for n in initial if n not in frozen]
    total, frozen_count = sum(t.numel() for t in initial.values()), sum(initial[n].numel() for n in frozen)
    assert info["total_params"] == total  # full sizes from ZeRO-3 shards (ds_numel)
    assert info["trainable_params"] == total - frozen_count
    assert info["groups"]["embeddings"] == {"params": 260 * 512, "trainable": 0, "tensors": 1}
    params = mlflow_run(storage, frozen_run).data.params
    assert params["model.trainable_params"] == str(total - frozen_count)
    assert json.loads(params["model.freeze"]) == ["embeddings", r"re:^model\.layers\.0\."]


@pytest.mark.parametrize(("entry", "message"), [
    ("[visoin]", "config error: model.freeze: unknown group 'visoin'"),
    (r'["re:^model\.blocks\."]', r"config error: model.freeze: 're:^model\\.blocks\\.' matches no parameter"),
])
def test_bad_freeze_fails_before_ray(entry: str, message: str, storage: Path, cli_in_process) -> None:
    import ray

    result = cli_in_process([f"model.freeze={entry}"], storage)
    assert result.returncode == 2 and not ray.is_initialized()
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: {message}"), result.stderr
    assert mlflow_run(storage, run_id_of(result.stdout)).info.status == "FAILED"
