"""Data parallel: stats observed as shards and reduced == stats observed by one worker, and so are results."""

from __future__ import annotations

import pytest
import torch

from jobs.quantize.algorithms import ALGORITHMS
from jobs.quantize.algorithms.base import calibrate
from jobs.quantize.algorithms.stats import Stats, reduce_stats
from kernels.quant import parse_format


def _run(tiny, algorithm: str, fmt: str, shards, cfg: dict):
    block = tiny.fresh()
    algo = ALGORITHMS.get(algorithm)(cfg)
    algo.prepare(block, parse_format(fmt), tiny.run_block)
    stats = calibrate(algo, block, shards)
    return stats, algo.apply(block, stats), block


@pytest.mark.parametrize(("algorithm", "fmt"), [("gptq", "w4g32"), ("awq", "w4g32"), ("smoothquant", "w8a8"),
                                                ("rtn", "w4g32")])
def test_two_shards_reduce_to_one(tiny, algorithm: str, fmt: str) -> None:
    batches = tiny.calib[:4]
    # float64 sums: shards differ only by summation order (~1e-16), which GPTQ's float32 Hessian rounds
    # away; with float32 sums a near-tie rounding can flip in a few rows (see the test below)
    cfg = {"stats_dtype": "float64"}
    one, res_one, block_one = _run(tiny, algorithm, fmt, [batches], cfg)
    two, res_two, block_two = _run(tiny, algorithm, fmt, [batches[:1], batches[1:]], cfg)
    assert list(one) == list(two) and one.ops == two.ops
    for key in one:
        # summation order moves a float64 sum by ~1e-16 of its summands' size, not of the sum itself (an
        # entry near 0 after cancellation can differ by 1e-12 relative), hence a bound on max|value|
        off = float((one[key] - two[key]).abs().max() / one[key].abs().max().clamp_min(1e-300))
        assert off <= 1e-14, f"{key}: reduced shards != one worker by {off:.1e} of max|value| (tolerance 1e-14)"
    for name, layer in res_one.layers.items():
        assert torch.equal(layer.qweight, res_two.layers[name].qweight), f"{name}: integers differ"
        assert torch.equal(layer.scale, res_two.layers[name].scale), f"{name}: scales differ"
    # the chosen alphas are the same; their loss ratios are float64 sums in another order (the 1e-14 above)
    ratios_one, ratios_two = res_one.info.pop("loss_vs_rtn", {}), res_two.info.pop("loss_vs_rtn", {})
    assert res_one.info == res_two.info and ratios_one == pytest.approx(ratios_two, rel=1e-12, abs=0)
    for (name, p1), p2 in zip(block_one.state_dict().items(), block_two.state_dict().values(), strict=True):
        assert torch.equal(p1, p2), name


def test_float32_stats_match_up_to_summation_order(tiny) -> None:
    batches = tiny.calib[:4]
    cfg = {"stats_dtype": "float32"}
    one, _, _ = _run(tiny, "gptq", "w4g32", [batches], cfg)
    two, _, _ = _run(tiny, "gptq", "w4g32", [batches[:2], batches[2:]], cfg)
    whole, _, _ = _run(tiny, "gptq", "w4g32", [[torch.cat(batches)]], cfg)  # one big batch, one forward
    for key in one:
        scale = one[key].abs().max()
        shards = float((one[key] - two[key]).abs().max() / scale)
        batch = float((one[key] - whole[key]).abs().max() / scale)
        # float32 sums in another order: ~1e-7 of the largest entry; a bigger batch also changes the
        # forward's own rounding, hence the looser bound
        assert shards <= 1e-6, f"{key}: shards differ by {shards:.1e} of max|value| (tolerance 1e-6)"
        assert batch <= 1e-5, f"{key}: batching changed stats by {batch:.1e} of max|value| (tolerance 1e-5)"


def test_reduce_ops() -> None:
    a, b = Stats(), Stats()
    for stats, v in ((a, 1.0), (b, 3.0)):
        stats.add("sum", torch.tensor([v, 2 * v]))
        stats.add("max", torch.tensor([v, -v]), op="max")
    out = reduce_stats([a, Stats(), b])  # an idle worker contributes nothing
    assert out["sum"].tolist() == [4.0, 8.0] and out["max"].tolist() == [3.0, -1.0]
    assert a["sum"].tolist() == [1.0, 2.0], "reduce must not modify its inputs"
    b.add("extra", torch.zeros(1))
    with pytest.raises(ValueError, match="different keys"):
        reduce_stats([a, b])
    with pytest.raises(ValueError, match="reduces by 'sum'"):
        a.add("sum", torch.zeros(2), op="max")
    with pytest.raises(ValueError, match="observed twice"):
        a.merged(b)


@pytest.mark.parametrize("algorithm", ["gptq", "awq"])
def test_mask_drops_padding_tokens(tiny, algorithm: str) -> None:
    # right padding under a causal mask: masking the pad tokens == observing the unpadded batch
    x = tiny.calib[0]
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    mask[:, 24:] = False
    algo = ALGORITHMS.get(algorithm)()
    algo.prepare(tiny.block, parse_format("w4g32"), tiny.run_block)
    padded, trimmed = Stats(), Stats()
    for p in range(algo.n_passes):
        prior_padded, prior_trimmed = Stats(padded.values.copy(), padded.ops.copy()), trimmed
        padded = prior_padded.merged(algo.observe(tiny.block, x, pass_idx=p, prior=prior_padded, mask=mask))
        trimmed = trimmed.merged(algo.observe(tiny.block, x[:, :24], pass_idx=p, prior=prior_trimmed))
    assert padded["tokens/self_attn.q_proj"].item() == 4 * 24
    for key in padded:
        scale = padded[key].abs().max()
        diff = float((padded[key] - trimmed[key]).abs().max() / scale)
        if key.startswith("awq_loss/"):
            # block-output errors are small differences of large outputs (the residual stream): the
            # forward's float32 rounding (which changes with the sequence length) shows at ~1e-3
            assert torch.argmin(padded[key]) == torch.argmin(trimmed[key]), key
            assert diff <= 2e-2, f"{key}: masked padded batch differs from the trimmed one by {diff:.1e} of max"
        else:
            assert diff <= 1e-5, f"{key}: masked padded batch differs from the trimmed one by {diff:.1e} of max"
