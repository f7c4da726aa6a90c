"""Fused decoder ops (kernels/fused): a fused model's loss and every gradient equal the eager model's in
float64, for every model type of every family with fused ops (core/models/families: `Family.fused_ops`, handed to
fuse_model as the SFT worker does), compiled by torch.compile (inductor's C++ backend on this CPU) and eager;
every registered class is fused in one of them; modules the ops do not reproduce keep their own forward."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from collections.abc import Callable

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from core.models.families import all_families, family_of
from kernels.fused import INSTALLERS, FusedOps, fuse_model, fused_ops, ops

# (family, model type) for every family that names fused ops: each case fuses with its own family's map
CASES = [(f.name, t) for f in all_families() if f.fused_ops for t in f.model_types]
IDS = [f"{name}-{model_type}" for name, model_type in CASES]
# The model runs in float64, but RMSNorm normalises in float32 by design (HF's math, kept by the fused op), so a
# compiled norm may round differently from the eager one at float32's 6e-8: 1e-6 of each gradient's scale.
# The eager fused ops run the eager modules' operations in the same order: 1e-12.
REL_TOL = {False: 1e-12, True: 1e-6}


def tiny_model(family: str, hidden_act: str = "silu") -> torch.nn.Module:
    config = AutoConfig.for_model(family, vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, hidden_act=hidden_act,
                                  max_position_embeddings=64, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.float64)
    with torch.no_grad():  # norms start at 1.0: random scales make a wrong weight handling visible
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model


def loss_and_grads(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1)).to(model.device)
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def classes_of(model: torch.nn.Module, family: str | None = None) -> dict[str, str]:
    """The class -> op kind map the SFT worker hands fuse_model: the model's family's."""
    found = family_of(model)
    assert found is not None and (family is None or found.name == family), (family, found)
    return found.fused_ops


def expected_counts(model: torch.nn.Module, classes: dict[str, str]) -> dict[str, int]:
    """Every module of a registered class, except rotary: one swap per modeling file."""
    present = Counter(type(m).__name__ for m in model.modules() if type(m).__name__ in classes)
    return {name: 1 if classes[name] == "rotary" else n for name, n in present.items()}


@pytest.fixture
def restore_rotary(monkeypatch: pytest.MonkeyPatch) -> Callable[[torch.nn.Module], None]:
    """install_rotary swaps a modeling file's global function for the process: put it back after each test."""
    def keep(model: torch.nn.Module) -> None:
        for module in model.modules():
            if type(module).__name__.endswith("Attention"):
                modeling = sys.modules[type(module).__module__]
                monkeypatch.setattr(modeling, "apply_rotary_pos_emb", modeling.apply_rotary_pos_emb)
    return keep


def assert_close(expected: tuple, got: tuple, rel_tol: float) -> None:
    (loss_e, grads_e), (loss_g, grads_g) = expected, got
    assert torch.allclose(loss_g, loss_e, rtol=rel_tol, atol=0), (loss_g, loss_e)
    for name, grad in grads_e.items():
        scale = grad.abs().max().item()
        assert scale > 0, f"{name} has no gradient: the comparison would be vacuous"
        err = (grads_g[name] - grad).abs().max().item()
        assert err <= rel_tol * scale, f"{name}: max |diff| {err:.3e} vs max |grad| {scale:.3e}"


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("family,model_type", CASES, ids=IDS)
def test_fused_model_equals_eager(family: str, model_type: str, compiled: bool, restore_rotary) -> None:
    model = tiny_model(model_type)
    restore_rotary(model)
    expected = loss_and_grads(model)
    classes = classes_of(model, family)
    counts = fuse_model(model, classes, fused_ops(compiled))
    assert counts == expected_counts(model, classes) and counts, counts
    if model_type in ("llama", "mistral", "qwen2", "qwen3"):  # the numbers, spelled out for the llama family
        prefix = type(model.model.norm).__name__.removesuffix("RMSNorm")
        norms_per_layer = 4 if model_type == "qwen3" else 2  # Qwen3 also norms queries and keys per head
        assert counts == {f"{prefix}RMSNorm": 2 * norms_per_layer + 1, f"{prefix}MLP": 2, f"{prefix}Attention": 1}
    assert_close(expected, loss_and_grads(model), REL_TOL[compiled])


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="CUDA: inductor's Triton kernels; the CPU cases compile the same ops in C++")
@pytest.mark.parametrize("family,model_type", CASES, ids=IDS)
def test_fused_model_equals_eager_on_cuda(family: str, model_type: str, restore_rotary) -> None:
    model = tiny_model(model_type).to("cuda")
    restore_rotary(model)
    expected = loss_and_grads(model)
    classes = classes_of(model, family)
    assert fuse_model(model, classes) == expected_counts(model, classes)
    assert_close(expected, loss_and_grads(model), REL_TOL[True])


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None,
                    reason="trainer.fused_ops=liger: Liger-Kernel's Triton kernels need CUDA and liger-kernel")
@pytest.mark.parametrize("family,model_type", CASES, ids=IDS)
def test_liger_ops_equal_eager_on_cuda(family: str, model_type: str, restore_rotary) -> None:
    from kernels.fused.liger import liger_ops

    model = tiny_model(model_type).to("cuda", torch.float32)  # Triton's kernels: float32 at most
    restore_rotary(model)
    expected = loss_and_grads(model)
    classes = classes_of(model, family)
    assert fuse_model(model, classes, liger_ops()) == expected_counts(model, classes)
    assert_close(expected, loss_and_grads(model), 1e-4)  # float32 sums in another order


def test_a_gelu_mlp_keeps_its_own_forward(restore_rotary) -> None:
    model = tiny_model("llama", hidden_act="gelu")
    restore_rotary(model)
    expected = loss_and_grads(model)
    counts = fuse_model(model, classes_of(model), fused_ops(compiled=False))
    assert "LlamaMLP" not in counts and counts["LlamaRMSNorm"] == 5
    assert_close(expected, loss_and_grads(model), REL_TOL[False])


def test_every_registered_class_is_checked_against_its_own_forward() -> None:
    """Each family's classes name an op kind kernels/fused installs, and each class is a module of one of the
    tested models (so test_fused_model_equals_eager fused it and compared it with its own forward)."""
    registered = {(f.name, cls) for f in all_families() for cls in f.fused_ops}
    assert registered, "no family names fused ops: nothing would be fused"
    assert {kind for f in all_families() for kind in f.fused_ops.values()} <= set(INSTALLERS)
    tested = {(family, type(m).__name__) for family, model_type in CASES for m in tiny_model(model_type).modules()}
    assert registered <= tested, registered - tested


def test_the_fused_ops_are_what_the_model_runs(restore_rotary) -> None:
    """Counting wrappers around the eager ops: one forward calls each norm, each MLP's product and each layer's
    rotary once, so the swapped global is what the attention classes really call."""
    calls: Counter = Counter()

    def counted(name: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    model = tiny_model("qwen3")
    restore_rotary(model)
    counting = FusedOps(*(counted(n, getattr(ops, n)) for n in ("rms_norm", "silu_mul", "rotary",
                                                                       "cross_entropy_sum")))
    fuse_model(model, classes_of(model), counting)
    loss_and_grads(model)
    assert calls == {"rms_norm": 9, "silu_mul": 2, "rotary": 2}


def test_changing_shapes_and_no_grad_never_fail(restore_rotary) -> None:
    """Hidden and per-head norms and a new shape per batch recompile the same functions past torch.compile's
    limit; they must fall back to eager, not fail the step (fullgraph would raise)."""
    model = tiny_model("qwen3")
    restore_rotary(model)
    fuse_model(model, classes_of(model), fused_ops(compiled=True))
    for length in range(5, 17):
        ids = torch.randint(0, 97, (1 + length % 3, length))
        model(input_ids=ids, labels=ids).loss.backward()
        with torch.no_grad():
            assert torch.isfinite(model(input_ids=ids).logits).all()


def test_a_same_named_class_outside_transformers_is_left_alone() -> None:
    """trust_remote_code copies reuse transformers' class names with other signatures."""
    LlamaRMSNorm = type("LlamaRMSNorm", (torch.nn.Module,), {"forward": lambda self, x: x})  # noqa: N806
    module = LlamaRMSNorm()
    llama = next(f for f in all_families() if "LlamaRMSNorm" in f.fused_ops)
    assert fuse_model(torch.nn.Sequential(module), llama.fused_ops, fused_ops(compiled=False)) == {}
    assert "forward" not in vars(module)
