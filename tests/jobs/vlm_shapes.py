"""llava_tiny fine-tuned on the shipped synthetic shapes (data=mm_demo: shape captions + a share of text chats)
through the real CLI: the session's Ray head, 2 DeepSpeed ZeRO-3 workers over gloo, MLflow sqlite. Session-scoped and
cached on disk, so every test that needs a trained VLM export (caption eval, quantization) shares one run:

    from tests.jobs.vlm_shapes import llava_shapes  # noqa: F401   (in a conftest; tests/jobs/conftest.py has it)

The model is llava_tiny with a smaller language model and vision tower (SHAPES_MODEL), so 100 steps of
~48 samples train it on 2 CPU cores; the processor (64x64 px, 64 image tokens) is llava_tiny's own.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from tests.conftest import run_cli, run_id_of

SHAPES_OVERRIDES = {
    "text_config": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "head_dim": 32},
    "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
}
SHAPES_MODEL = ["model=llava_tiny", *(
    f"+model.overrides.{key}={{" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}"
    for key, fields in SHAPES_OVERRIDES.items())]
SHAPES_STEPS = 100
SHAPES_SFT = [
    *SHAPES_MODEL, "data=mm_demo", "data.pack_max_length=3072",  # ~24 samples per packed row
    "trainer.num_workers=2", "trainer.micro_batch_size=1", f"trainer.max_steps={SHAPES_STEPS}",
    "trainer.optim.lr=3e-3", "trainer.optim.warmup_steps=10", "trainer.log_every=10", "trainer.seed=0",
    "job.name=llava-shapes",
]


@pytest.fixture(scope="session")
def llava_shapes(tmp_path_factory: pytest.TempPathFactory, ray_head) -> SimpleNamespace:
    """storage (the MLflow store's dir), export (HF dir with the processor), run_id, losses, wall_s."""
    root = tmp_path_factory.getbasetemp() / "llava-shapes"
    storage, record = root / "runs", root / "result.json"
    if not record.is_file():  # one run per session, whichever conftest imported this fixture
        began = time.perf_counter()
        result = run_cli([*SHAPES_SFT, *ray_head.args], storage, timeout=1200, env=ray_head.env)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        summary = json.loads((storage / "llava-shapes" / "summary.json").read_text())
        record.write_text(json.dumps({"run_id": run_id_of(result.stdout), "losses": summary["losses"],
                                      "wall_s": time.perf_counter() - began, "stdout": result.stdout[-20000:]}))
    saved = json.loads(record.read_text())
    return SimpleNamespace(storage=storage, export=storage / "llava-shapes" / "export", **saved)
