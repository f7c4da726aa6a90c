"""model.freeze under real SFT: llava_tiny on image+caption chats (data/shapes/make_shapes.py, 16 images),
2 DeepSpeed ZeRO-3 workers over gloo (every parameter partitioned), one short run.

One run covers every group: frozen are the vision tower except its last layer (`vision` with a `!re:`
exclude), the tied embeddings/lm_head (`embeddings`), the projector's first Linear and language layer 0
(`re:`); trained are the last vision layer, the projector's second Linear and language layers 1-2.
The initial weights are rebuilt here from the trainer seed (rank 0's build is what ZeRO-3 starts from)
and compared with the export: frozen tensors bit-identical, every trainable tensor changed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.models import MODELS, ModelConfig
from tests.conftest import FAST_SFT, REPO, mlflow_run, run_cli, run_id_of

pytestmark = pytest.mark.e2e  # (tests/conftest.py: the end-to-end lane)

ENTRIES = ["vision", r"!re:^model\.vision_tower\.encoder\.layers\.2\.", "embeddings",
           r"re:^model\.multi_modal_projector\.linear_1\.", r"re:^model\.language_model\.layers\.0\."]
FROZEN = re.compile(r"^model\.(vision_tower\.(?!encoder\.layers\.2\.)|language_model\.embed_tokens\.|"
                    r"multi_modal_projector\.linear_1\.|language_model\.layers\.0\.)")
STEPS = 3


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sft-freeze") / "runs"


def _train_frozen(storage: Path, name: str, entries: list[str], *extra: str) -> str:
    shapes = storage.parent / "shapes"
    if not (shapes / "train.jsonl").is_file():
        subprocess.run([sys.executable, str(REPO / "data/shapes/make_shapes.py"), "--out", str(shapes), "--train",
                        "16", "--heldout", "0"], check=True)
    freeze = "model.freeze=[" + ",".join(f'"{e}"' for e in entries) + "]"  # quoted: ^ ! ( are Hydra syntax
    data = f"data.datasets=[{{path: {shapes / 'train.jsonl'}, format: mm_chat_jsonl}}]"
    result = run_cli([*FAST_SFT, "model=llava_tiny", data, freeze, f"trainer.max_steps={STEPS}", "trainer.seed=0",
                      f"job.name={name}", *extra], storage)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return run_id_of(result.stdout)


@pytest.fixture(scope="module")
def frozen_run(storage: Path) -> str:
    return _train_frozen(storage, "freeze", ENTRIES)


def _assert_frozen_exactly(initial: dict[str, torch.Tensor], export: Path, frozen: set[str]) -> None:
    exported = _params("hf", str(export))  # loads through model=hf (with its processor)
    assert exported.keys() == initial.keys()
    for name, start in initial.items():
        if name in frozen:
            assert torch.equal(exported[name], start), f"{name} changed though frozen"
        else:
            assert not torch.equal(exported[name], start), f"{name} did not train"


def _params(name: str, path: str | None = None, seed: int = 0,
            overrides: dict | None = None) -> dict[str, torch.Tensor]:
    source, cfg = MODELS.get(name), ModelConfig(name=name, path=path, overrides=overrides or {})
    torch.manual_seed(seed)  # trainer.seed + rank 0
    model = source.build(cfg, source.hf_config(cfg), torch.float32)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_frozen_weights_are_bit_identical_and_trainable_ones_changed(frozen_run: str, storage: Path) -> None:
    initial = _params("llava_tiny")
    frozen = {n for n in initial if FROZEN.match(n)}
    assert len(frozen) == 53 and len(initial) - len(frozen) == 41  # 94 tensors in llava_tiny
    _assert_frozen_exactly(initial, storage / "freeze" / "export", frozen)
    assert MODELS.get("hf").processor(ModelConfig(name="hf", path=str(storage / "freeze" / "export"))) is not None


def test_trainable_names_and_counts_are_logged(frozen_run: str, storage: Path) -> None:
    from mlflow.tracking import MlflowClient

    initial = _params("llava_tiny")
    trainable = [n for n in initial if not FROZEN.match(n)]
    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    info = json.loads(Path(client.download_artifacts(frozen_run, "model/parameters.json", str(storage.parent)))
                      .read_text())
    assert info["trainable_names"] == trainable
    total, trainable_count = sum(t.numel() for t in initial.values()), sum(initial[n].numel() for n in trainable)
    assert info["total_params"] == total  # full sizes from ZeRO-3 shards (ds_numel)
    assert info["trainable_params"] == trainable_count
    assert info["groups"]["embeddings"] == {"params": 260 * 512, "trainable": 0, "tensors": 1}
    assert info["groups"]["projector"]["trainable"] == 512 * 512 + 512  # linear_2 only
    params = mlflow_run(storage, frozen_run).data.params
    assert params["model.trainable_params"] == str(trainable_count)
    assert json.loads(params["model.freeze"]) == ENTRIES


def test_language_and_lm_head_groups_freeze_under_zero3(storage: Path) -> None:
    """The other two groups by name, with lm_head untied from the embeddings so that it is its own tensor:
    language model and lm_head frozen; vision tower, projector and embeddings train. The tower's
    post_layernorm is frozen too: LLaVA reads the encoder's hidden states, so it gets no gradient."""
    untie = {"tie_word_embeddings": False, "text_config": {"tie_word_embeddings": False}}
    _train_frozen(storage, "freeze-language", ["language", "lm_head", r"re:^model\.vision_tower\.post_layernorm\."],
                  "+model.overrides.tie_word_embeddings=false",
                  "+model.overrides.text_config={tie_word_embeddings: false}")
    initial = _params("llava_tiny", overrides=untie)
    frozen = {n for n in initial if n == "lm_head.weight" or n.startswith("model.vision_tower.post_layernorm.")
              or (n.startswith("model.language_model.") and "embed_tokens" not in n)}
    assert "lm_head.weight" in frozen and len(initial) == 95
    _assert_frozen_exactly(initial, storage / "freeze-language" / "export", frozen)


@pytest.mark.parametrize(("entry", "message"), [
    ("[visoin]", "config error: model.freeze: 'visoin': matches no parameter"),  # not a group: a name
    (r'["re:^model\.blocks\."]', r"config error: model.freeze: 're:^model\\.blocks\\.': matches no parameter"),
])
def test_bad_freeze_fails_before_ray(entry: str, message: str, storage: Path, cli_in_process) -> None:
    import ray

    result = cli_in_process([f"model.freeze={entry}"], storage)
    assert result.returncode == 2 and not ray.is_initialized()
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: {message}"), result.stderr
    assert mlflow_run(storage, run_id_of(result.stdout)).info.status == "FAILED"
