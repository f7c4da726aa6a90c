"""Reference ops vs an independent float64 implementation; pack/unpack layout and round trips."""

from __future__ import annotations

import itertools

import pytest
import torch

from kernels.quant import get_op, parse_format
from kernels.quant.formats import GROUP_SIZES, WEIGHT_BITS
from kernels.quant.reference import (
    compute_qparams,
    dequantize,
    fake_quant,
    fake_quant_per_token,
    quantize,
    quantize_weight,
    weight_quant_delta,
)

FORMATS = [f"w{b}g{g}" for b, g in itertools.product(WEIGHT_BITS, GROUP_SIZES)] + [f"w{b}" for b in WEIGHT_BITS]


def reference_fake_quant(w: torch.Tensor, bits: int, group: int | None, symmetric: bool):
    """Written out independently, float64: returns (dequantized, x / scale before rounding)."""
    rows, cols = w.shape
    size = group or cols
    g = w.double().reshape(rows, cols // size, size)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo = torch.clamp(g.min(-1, keepdim=True).values, max=0.0)
    hi = torch.clamp(g.max(-1, keepdim=True).values, min=0.0)
    if symmetric:
        scale = torch.maximum(lo.abs(), hi) / ((qmax - qmin) / 2.0)
        zero = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / (qmax - qmin)
    scale[scale == 0] = 1.0  # an all-zero group: any scale represents it exactly
    if not symmetric:
        zero = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    unrounded = g / scale
    q = torch.clamp(torch.round(unrounded) + zero, qmin, qmax)
    return ((q - zero) * scale).reshape(rows, cols), unrounded.reshape(rows, cols), scale


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("spec", FORMATS)
def test_round_trip_matches_float64_reference(spec: str, symmetric: bool) -> None:
    fmt = parse_format(spec, symmetric)
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(fmt.weight_bits)) * 0.05
    w[0, :7] = 0  # a partly zero row, and a fully zero group where groups are small enough
    w[1, : fmt.group_size or 0] = 0
    expected, unrounded, ref_scale = reference_fake_quant(w, fmt.weight_bits, fmt.group_size, symmetric)
    q, scale, zero = quantize_weight(w, fmt)
    got = dequantize(q, scale, zero, fmt.group_size).double()
    # float32 vs float64 can round the other way only where x/scale sits on a .5 boundary: skip those
    frac = unrounded - unrounded.floor()
    ties = (frac - 0.5).abs() < 1e-4
    step = ref_scale.expand(-1, -1, (fmt.group_size or w.shape[1])).reshape(w.shape)
    # float32 scale and product: a few float32 ulps of the value (or of one step near 0)
    eps32 = torch.finfo(torch.float32).eps
    tol = 4 * eps32 * (expected.abs() + step)
    err = (got - expected).abs()
    assert q.dtype == torch.int8 and q.min() >= fmt.qmin and q.max() <= fmt.qmax
    assert bool((err[~ties] <= tol[~ties]).all()), (
        f"{fmt}: dequantized values differ from the float64 reference by more than 4 float32 ulps of "
        f"max(|value|, step) (max {float((err / tol)[~ties].max()):.2f} x tol); {int(ties.sum())} ties skipped"
    )
    assert torch.equal(fake_quant(w, fmt), got.float()), "fake_quant must equal dequantize(quantize(w))"
    assert bool((got[0, :7] == 0).all()), "0 must stay exactly representable"


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_clip_shrinks_range_and_error_is_bounded(symmetric: bool) -> None:
    fmt = parse_format("w4g32", symmetric)
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    scale_full, _ = compute_qparams(w, 4, 32, symmetric)
    scale_half, _ = compute_qparams(w, 4, 32, symmetric, clip=0.5)
    assert torch.allclose(scale_half, scale_full * 0.5), "clip=0.5 must halve the scale"
    q, scale, zero = quantize_weight(w, fmt)
    err = (dequantize(q, scale, zero, 32) - w).abs().reshape(8, 2, 32)
    # unclipped RTN: at most half a step off (sym: the top level can be up to one step off after clamping)
    bound = scale.unsqueeze(-1) * (1.0 if symmetric else 0.5) * (1 + 1e-5)
    assert bool((err <= bound).all()), f"max error {float((err / scale.unsqueeze(-1)).max()):.3f} steps"


def test_per_token_activation_fake_quant() -> None:
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(0))
    x[0, 0, 7] = 100.0  # one outlier only coarsens its own token
    y = fake_quant_per_token(x)
    step = x.abs().amax(-1, keepdim=True) / 127
    assert bool(((y - x).abs() <= step / 2 * (1 + 1e-5)).all()), "per-token int8: error <= half a step"
    assert torch.equal(y[1], fake_quant_per_token(x[1])), "tokens are independent"
    assert torch.equal(fake_quant_per_token(torch.zeros(2, 4)), torch.zeros(2, 4))


def test_per_token_quant_delta_is_formed_in_float32() -> None:
    """Q_a(x) - x for bf16 x: the float32 difference rounded once, not the difference of two bf16 roundings."""
    x = (torch.randn(4, 256, generator=torch.Generator().manual_seed(1)) * 3).to(torch.bfloat16)
    delta = get_op("per_token_quant_delta")(x, 8)
    exact = fake_quant_per_token(x.double(), 8) - x.double()  # Q_a(x) as the op forms it, minus x exactly
    assert delta.dtype == torch.bfloat16
    assert torch.equal(delta, exact.to(torch.bfloat16)), "one rounding of the exact difference"
    assert not torch.equal(delta, fake_quant_per_token(x, 8) - x), "two bf16 roundings differ (the reason)"


@pytest.mark.parametrize("spec", ["w4g128", "w8", "w3g32"])
def test_weight_quant_delta_is_the_float32_difference_rounded_once(spec: str) -> None:
    """Q(w) - w in w's dtype: the float32 fake quant minus w, rounded once (not Q(w) rounded to bf16, minus w)."""
    w = (torch.randn(64, 256, generator=torch.Generator().manual_seed(2)) * 0.02).to(torch.bfloat16)
    fmt = parse_format(spec)
    delta = get_op("weight_quant_delta")(w, fmt)
    exact = fake_quant(w.float(), fmt).double() - w.double()
    assert delta.dtype == torch.bfloat16 and delta.shape == w.shape
    assert torch.equal(delta, exact.to(torch.bfloat16)), "one rounding of the float32 difference"
    assert not torch.equal(delta, fake_quant(w, fmt) - w), "two bf16 roundings differ (the reason)"
    w64 = w.double()
    assert torch.equal(weight_quant_delta(w64, fmt), fake_quant(w64, fmt) - w64), "float64 stays float64"


def test_get_op_falls_back_to_reference_on_cpu() -> None:
    assert get_op("fake_quant") is fake_quant
    assert get_op("quantize", backend="torch") is quantize
    with pytest.raises(KeyError, match="unknown quant op"):
        get_op("nope")


def test_quant_backend_environment_picks_auto_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """QUANT_BACKEND=torch: the reference even where a Triton kernel runs (on CUDA the default is the kernel)."""
    monkeypatch.setenv("QUANT_BACKEND", "torch")
    assert get_op("weight_quant_delta") is weight_quant_delta
    monkeypatch.delenv("QUANT_BACKEND")
    assert (get_op("weight_quant_delta") is weight_quant_delta) == (not torch.cuda.is_available())
    monkeypatch.setenv("QUANT_BACKEND", "fast")
    with pytest.raises(KeyError, match="QUANT_BACKEND='fast'"):
        get_op("rowdot")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the same values on a CUDA device: needs one")


@cuda
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("spec", ["w4g128", "w8"])
def test_weights_quantize_the_same_on_cuda_as_on_the_cpu(spec: str, symmetric: bool) -> None:
    """Bit for bit. A symmetric group's -max|w| sits on a rounding tie (-7.5 steps at 4 bits): torch on CUDA divides
    by a Python number as x * (1/number), which put it on the other side in about a third of the groups."""
    w = torch.randn(512, 1024, generator=torch.Generator().manual_seed(0)) * 0.02
    fmt = parse_format(spec, symmetric)
    on_cpu, on_cuda = quantize_weight(w, fmt), quantize_weight(w.cuda(), fmt)
    for name, a, b in zip(("q", "scale", "zero"), on_cpu, on_cuda, strict=True):
        assert torch.equal(a, b.cpu()), f"{name}: {int((a != b.cpu()).sum())} of {a.numel()} differ"
    assert torch.equal(fake_quant(w, fmt), fake_quant(w.cuda(), fmt).cpu())


@cuda
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("spec", ["w4g128", "w8", "w3g32"])
def test_weight_deltas_are_the_same_on_cuda_as_on_the_cpu(spec: str, symmetric: bool) -> None:
    w = (torch.randn(512, 1024, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    fmt = parse_format(spec, symmetric)
    want = weight_quant_delta(w, fmt)
    for backend in ("torch", "auto"):  # the reference on CUDA, and the Triton kernel
        got = get_op("weight_quant_delta", backend)(w.cuda(), fmt).cpu()
        assert torch.equal(got, want), f"{backend}: {int((got != want).sum())} of {want.numel()} differ"


@cuda
@pytest.mark.parametrize("bits", [4, 8])
def test_activations_quantize_the_same_on_cuda_as_on_the_cpu(bits: int) -> None:
    x = (torch.randn(2048, 1024, generator=torch.Generator().manual_seed(0)) * 3).to(torch.bfloat16)
    want = get_op("per_token_quant_delta", "torch")(x, bits)
    for backend in ("torch", "auto"):  # the reference on CUDA, and the Triton kernel
        got = get_op("per_token_quant_delta", backend)(x.cuda(), bits).cpu()
        assert torch.equal(got, want), f"{backend}: {int((got != want).sum())} of {want.numel()} differ"
    assert torch.equal(fake_quant_per_token(x.cuda(), bits).cpu(), fake_quant_per_token(x, bits))
