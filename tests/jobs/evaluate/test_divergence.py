"""Per-token KL divergence, top-1 agreement and perplexity as the evaluate worker computes them (in this process, no
Ray), against a float64 reference in plain torch on tiny models: the FP model of tests/jobs/conftest.py (fp_dir)
and a copy with perturbed weights; and the reduction's independence of how the batches are split over workers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from core.data.calib import token_blocks
from core.errors import ConfigError
from core.models.byte_tokenizer import byte_tokenizer
from jobs.evaluate import divergence
from jobs.evaluate.config import EvalConfig
from jobs.evaluate.divergence import pair_metrics, token_scores
from jobs.evaluate.perplexity import PERPLEXITY
from jobs.evaluate.worker import EvalWorker

E = EvalConfig(num_samples=6, seq_len=48, batch_size=2)
# The worker runs the models in float32 (on a CPU its per-token math in float64), the reference everything in
# float64. Measured on the perturbed model below: KL mean 4e-8 and p99 1e-7 relative from the reference's, per-token
# KL within 5e-9 nats (2e-6 relative), perplexity 1e-8 relative, top-1 agreement equal. Bounds: about 10x those.
KL_REL, PPL_REL, KL_ABS = 1e-6, 1e-7, 5e-8


@pytest.fixture(scope="module")
def ids() -> np.ndarray:
    return token_blocks("data/text/heldout.txt", "text", byte_tokenizer(), E.num_samples, E.seq_len, 0)


@pytest.fixture(scope="module")
def perturbed_dir(fp_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp_dir with every block Linear's weights scaled by (1 + 0.1 N(0, 1)), elementwise (a rough quantization)."""
    out = Path(shutil.copytree(fp_dir, tmp_path_factory.mktemp("perturbed") / "model"))
    weights = load_file(fp_dir / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    for name, tensor in weights.items():
        if ".layers." in name and name.endswith("proj.weight"):
            weights[name] = tensor * (1 + 0.1 * torch.randn(tensor.shape, generator=generator))
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture
def threads():
    """The worker sets torch's thread count for its process: this one's is restored after the test."""
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def _worker(model: Path, reference: Path) -> EvalWorker:
    return EvalWorker([("model", "hf", str(model), {}), ("compare_to", "hf", str(reference), {})], E, 0, False,
                      "float32")


def _metrics(raw: dict) -> dict[str, float]:
    model, ref = (PERPLEXITY.summarize(raw[label], None, None) for label in ("model", "compare_to"))
    return {**model, **{f"ref_{k}": v for k, v in ref.items()}, **PERPLEXITY.compare(model, ref),
            **PERPLEXITY.paired(raw)}


@torch.no_grad()
def _float64_reference(model: Path, reference: Path, ids: np.ndarray) -> dict[str, np.ndarray]:
    from transformers import AutoModelForCausalLM

    q, p = (AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64).eval() for d in (model, reference))
    batch = torch.tensor(ids)
    log_q, log_p = (torch.log_softmax(m(input_ids=batch).logits[:, :-1], -1).flatten(0, 1) for m in (q, p))
    target = batch[:, 1:].reshape(-1, 1)
    return {"nll": -log_q.gather(-1, target)[:, 0].numpy(), "ref_nll": -log_p.gather(-1, target)[:, 0].numpy(),
            "kl": (log_p.exp() * (log_p - log_q)).sum(-1).numpy(),
            "agree": (log_q.argmax(-1) == log_p.argmax(-1)).numpy()}


def test_token_scores_match_float64_math(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(37, 1000, generator=generator)
    ref = logits + 0.3 * torch.randn(37, 1000, generator=generator)
    targets = torch.randint(0, 1000, (37,), generator=generator)
    monkeypatch.setattr(divergence, "CHUNK_ELEMENTS", 5 * 1000)  # chunks of 5 positions: 8 chunks
    got = token_scores(logits, targets, ref)
    log_q, log_p = (torch.log_softmax(x.double(), -1) for x in (logits, ref))
    assert torch.allclose(got["nll"].double(), -log_q[torch.arange(37), targets], atol=1e-5, rtol=0)
    assert torch.allclose(got["ref_nll"].double(), -log_p[torch.arange(37), targets], atol=1e-5, rtol=0)
    assert torch.allclose(got["kl"].double(), (log_p.exp() * (log_p - log_q)).sum(-1), atol=1e-6, rtol=1e-5)
    assert torch.equal(got["agree"], logits.argmax(-1) == ref.argmax(-1))
    assert set(token_scores(logits, targets)) == {"nll"}


def test_pair_metrics_are_exact_over_every_token() -> None:
    kl = np.arange(1, 201) / 100  # 0.01 .. 2.00
    agree = np.arange(200) % 4 != 0
    m = pair_metrics(kl, agree)
    assert m["kl_mean"] == pytest.approx(1.005, rel=1e-12) and m["kl_max"] == pytest.approx(2.0)
    assert m["kl_p99"] == pytest.approx(1.9801, rel=1e-6)  # numpy's linear interpolation at 0.99 * 199 = 197.01
    assert m["top1_agreement"] == 0.75


def test_identical_models_diverge_by_exactly_zero(fp_dir: Path, ids: np.ndarray, threads) -> None:
    raw = _worker(fp_dir, fp_dir).score(ids)["raw"]
    assert np.array_equal(raw["model"]["nll"], raw["compare_to"]["nll"])
    assert not raw["pair"]["kl"].any() and raw["pair"]["agree"].all()
    m = _metrics(raw)
    assert m["kl_mean"] == m["kl_p99"] == m["kl_max"] == m["delta_perplexity"] == 0.0
    assert m["top1_agreement"] == 1.0 and m["tokens"] == E.num_samples * (E.seq_len - 1)


def test_perturbed_model_against_a_float64_reference(fp_dir: Path, perturbed_dir: Path, ids: np.ndarray,
                                                     threads) -> None:
    raw = _worker(perturbed_dir, fp_dir).score(ids)["raw"]
    ref = _float64_reference(perturbed_dir, fp_dir, ids)
    assert np.abs(raw["pair"]["kl"] - ref["kl"]).max() <= KL_ABS
    assert np.array_equal(raw["pair"]["agree"], ref["agree"])
    m, expect = _metrics(raw), pair_metrics(ref["kl"], ref["agree"])
    assert m["kl_mean"] > 1e-3 and m["kl_p99"] > m["kl_mean"], m  # the perturbation shows
    for key in ("kl_mean", "kl_p99", "kl_max"):
        assert m[key] == pytest.approx(expect[key], rel=KL_REL), key
    assert m["top1_agreement"] == expect["top1_agreement"] < 1.0
    ppl, ref_ppl = (float(np.exp(ref[k].mean())) for k in ("nll", "ref_nll"))
    assert m["perplexity"] == pytest.approx(ppl, rel=PPL_REL) and m["ref_perplexity"] == pytest.approx(ref_ppl,
                                                                                                     rel=PPL_REL)
    assert m["delta_perplexity"] == pytest.approx(ppl - ref_ppl, abs=PPL_REL * (ppl + ref_ppl))


def test_batches_split_over_two_workers_reduce_to_one_workers_result(fp_dir: Path, perturbed_dir: Path,
                                                                      ids: np.ndarray, threads) -> None:
    """Two parts (as two workers get them) scored and merged: the same per-token arrays, hence bit-identical sums."""
    worker = _worker(perturbed_dir, fp_dir)
    whole = PERPLEXITY.merge([worker.score(ids)["raw"]])
    parts = PERPLEXITY.split(ids, E, 2)
    assert [len(p) for p in parts] == [4, 2]  # 3 batches of 2: whole batches, in order
    merged = PERPLEXITY.merge([worker.score(part)["raw"] for part in parts])
    for label, key in (("model", "nll"), ("compare_to", "nll"), ("pair", "kl"), ("pair", "agree")):
        assert np.array_equal(merged[label][key], whole[label][key]), (label, key)
    assert _metrics(merged) == _metrics(whole) and merged["input_tokens"] == whole["input_tokens"] == ids.size


def test_more_workers_than_batches_is_refused(ids: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="4 workers but only 3 batches of eval.batch_size=2") as err:
        PERPLEXITY.split(ids, E, 4)
    assert err.value.field == "eval.num_workers"
