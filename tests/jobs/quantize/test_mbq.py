"""MBQ units: per-token weights on a hand-built example, the weighted loss against a float64 reference, the
block-by-block gradient pass against full-model autograd (float64 tiny LLaVA), equal weights == AWQ bit for bit,
and the W/A alpha search."""

from __future__ import annotations

import torch

from core.blocks.layerwise import Layerwise
from core.data.calib_mm import PAD, TEXT, VISION
from core.models import MODELS, ModelConfig
from jobs.quantize.algorithms.awq import AWQ, _sse
from jobs.quantize.algorithms.mbq import MBQ, token_weights
from jobs.quantize.algorithms.stats import Stats, reduce_stats
from jobs.quantize.modality import block_weights, modality_grad_stats, modality_weights
from kernels.quant import parse_format
from tests.core.data.test_calib_mm import calib

SMALL = {"text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16},
         "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                           "num_attention_heads": 2}}


def tiny_llava(dtype: torch.dtype, num_samples: int = 3, text_ratio: float = 0.34) -> tuple:
    """(model, Layerwise, calibration rows) of a seeded small llava_tiny."""
    from core.data.calib_mm import calibration_rows

    cfg = ModelConfig(name="llava_tiny", overrides=SMALL)
    source = MODELS.get("llava_tiny")
    torch.manual_seed(0)
    model = source.build(cfg, source.hf_config(cfg), dtype).eval()
    rows = calibration_rows(calib(num_samples=num_samples, text_ratio=text_ratio), source.tokenizer(cfg),
                            source.processor(cfg))
    return model, Layerwise(model), rows


def test_token_weights_hand_built() -> None:
    modality = torch.tensor([[VISION, VISION, TEXT, TEXT, PAD], [VISION, TEXT, TEXT, PAD, PAD]])
    w = {"w_vision": 0.5, "w_text": 1.0, "n_vision": 3, "n_text": 4}
    expected = torch.tensor([[0.5 / 3, 0.5 / 3, 0.25, 0.25, 0], [0.5 / 3, 0.25, 0.25, 0, 0]])
    assert torch.allclose(token_weights(modality, w, "modality"), expected)
    assert torch.equal(token_weights(modality, w, "tokens"), torch.tensor([[0.5, 0.5, 1, 1, 0], [0.5, 1, 1, 0, 0]]))
    assert torch.equal(token_weights(modality, w, "tokens", equal=True), (modality != PAD).float())
    stats = Stats()
    for name, value, count in (("vision", 6.0, 3.0), ("text", 2.0, 4.0)):
        stats.add(f"grad/{name}/0", torch.tensor(value, dtype=torch.float64))
        stats.add(f"count/{name}/0", torch.tensor(count, dtype=torch.float64))
    weights = modality_weights(stats, 1, {"vision": 3, "text": 4})
    assert weights["blocks"][0] == {"grad_vision": 2.0, "grad_text": 0.5, "w_vision": 4.0, "w_text": 1.0}
    assert block_weights(weights, 0) == {"w_vision": 4.0, "w_text": 1.0, "n_vision": 3, "n_text": 4}


def test_weighted_loss_matches_float64_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    y, y_ref = (torch.randn(3, 7, 16, generator=gen) for _ in range(2))
    modality = torch.randint(0, 3, (3, 7), generator=gen)
    w = {"w_vision": 0.3, "w_text": 1.0, "n_vision": int((modality == VISION).sum()),
         "n_text": int((modality == TEXT).sum())}
    err = (y.double() - y_ref.double()).square().sum(-1)
    mse = {code: err[modality == code].mean() for code in (VISION, TEXT)}
    reference = 0.3 * mse[VISION] + 1.0 * mse[TEXT]  # w_v * MSE(vision) + w_t * MSE(text)
    got = _sse(y, y_ref, token_weights(modality, w, "modality"))
    assert torch.allclose(got, reference, rtol=1e-6, atol=0)


def test_gradient_pass_matches_full_model_autograd() -> None:

    model, lw, rows = tiny_llava(torch.float64)

    parts = [modality_grad_stats(lw, [b]) for b in rows.batches(2)]  # two "workers"
    got = modality_weights(reduce_stats(parts), 2, rows.counts())
    # reference: one autograd graph through the whole model, block outputs' gradients retained
    outs = []
    hooks = [blk.register_forward_hook(lambda _m, _a, out: outs.append(out[0] if isinstance(out, tuple) else out))
             for blk in lw.blocks]
    model.requires_grad_(True)
    sums = {(i, m): 0.0 for i in range(2) for m in (VISION, TEXT)}
    counts = dict.fromkeys(sums, 0)
    for b in rows.batches(4):
        x = lw.capture_rows(b)[0].requires_grad_(True)
        outs.clear()  # the capture's recorders went through the hooks too
        logits = model(inputs_embeds=x, use_cache=False).logits
        labels = torch.tensor(b.labels)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1), reduction="sum")
        grads = torch.autograd.grad(loss, outs)
        for i, g in enumerate(grads):
            for m in (VISION, TEXT):
                mask = torch.tensor(b.modality) == m
                sums[i, m] += g.abs()[mask].sum().item()
                counts[i, m] += int(mask.sum()) * g.shape[-1]
    for h in hooks:
        h.remove()
    for i, block in enumerate(got["blocks"]):  # 1e-6: loss_grad forms the logits in float32, as model losses do
        assert abs(block["grad_vision"] - sums[i, VISION] / counts[i, VISION]) <= 1e-6 * block["grad_text"]
        assert abs(block["grad_text"] - sums[i, TEXT] / counts[i, TEXT]) <= 1e-6 * block["grad_text"]
    assert got["blocks"][-1]["grad_vision"] == 0.0  # the last block's vision outputs reach no caption token


def _run(algo, tiny, fmt: str, masks) -> tuple:
    block = tiny.fresh()
    algo.prepare(block, parse_format(fmt), tiny.run_block)
    stats = Stats()
    for p in range(algo.n_passes):
        stats = stats.merged(algo.observe_shard(block, tiny.calib, pass_idx=p, prior=stats, masks=masks))
    return block, algo.apply(block, stats), stats


def test_equal_weights_is_awq_exactly(tiny) -> None:
    gen = torch.Generator().manual_seed(3)
    modality = [torch.randint(1, 3, x.shape[:2], generator=gen) for x in tiny.calib]  # no padding
    opts = {"n_grid": 5, "clip_grid": 5}
    mbq = MBQ({**opts, "weights": "equal", "normalize": "tokens"})
    masks = [mbq.token_masks(m, None) for m in modality]
    _, awq_result, awq_stats = _run(AWQ(opts), tiny, "w3g32", None)
    _, mbq_result, mbq_stats = _run(mbq, tiny, "w3g32", masks)
    for key in awq_stats:
        assert torch.equal(awq_stats[key], mbq_stats[key]), key
    assert awq_result.info["alpha"] == mbq_result.info["alpha"]
    for name, layer in awq_result.layers.items():
        other = mbq_result.layers[name]
        assert torch.equal(layer.qweight, other.qweight) and torch.equal(layer.scale, other.scale), name
    # gradient weights that ignore one modality change the loss the search minimises
    w = {"w_vision": 0.0, "w_text": 1.0, "n_vision": 1, "n_text": 1}
    gradient = MBQ(opts)
    _, _, stats = _run(gradient, tiny, "w3g32", [gradient.token_masks(m, w) for m in modality])
    assert not torch.equal(stats["awq_loss/input_layernorm"], awq_stats["awq_loss/input_layernorm"])


def test_weight_activation_alpha_search(tiny) -> None:
    modality = [torch.full(x.shape[:2], TEXT) for x in tiny.calib]
    mbq = MBQ({"n_grid": 4, "clip": False})
    w = {"w_vision": 1.0, "w_text": 1.0, "n_vision": 1, "n_text": 1}
    block, result, _ = _run(mbq, tiny, "w8a8", [mbq.token_masks(m, w) for m in modality])
    assert sorted(result.smoothing) == ["input_layernorm", "post_attention_layernorm"]  # norm-fed only
    assert set(result.info["alpha"].values()) <= {0.0, 0.25, 0.5, 0.75}
    assert type(block.self_attn.q_proj).__name__ == "ActQuantLinear"
    assert tiny.error(block) < 0.05


def test_bad_mbq_input_is_one_line(tmp_path, cli_in_process) -> None:
    """Refused before Ray starts: MBQ on text calibration, image calibration for a text model, a bad option."""
    cases = [
        (["model=llava_tiny", "quant=mbq"], "error: config error: calib: quant=mbq balances vision and text tokens"),
        (["model=qwen3_tiny", "calib=image_caption"],
         "error: config error: calib.format: mm_chat_jsonl calibration needs a vision-language model"),
        (["model=llava_tiny", "quant=mbq", "calib=image_caption", "quant.options.normalize=sum"],
         "error: config error: quant.options.normalize: must be one of modality, tokens, got 'sum'"),
    ]
    for extra, expected in cases:
        result = cli_in_process(["job=quantize", *extra, "tracking.enabled=false"], tmp_path / "runs")
        assert result.returncode == 2 and expected in result.stdout + result.stderr, result.stdout + result.stderr


def test_stem_on_borrows_only_the_stem_and_gives_it_back(monkeypatch) -> None:
    """The worker embeds calibration rows with everything outside the blocks (embeddings, vision tower, projector,
    final norm) on its GPU (on the CPU the 7B shape's ViT took minutes); the blocks stay put and the CPU tensors
    come back untouched."""
    model, lw, rows = tiny_llava(torch.float32, num_samples=2, text_ratio=0.0)
    borrowed = {id(t) for t in lw.stem()}
    assert {n for n, p in model.named_parameters() if id(p) in borrowed} == {
        n for n, _ in model.named_parameters() if not n.startswith(lw.block_prefix(0)[:-2])}
    assert {"model.vision_tower", "model.multi_modal_projector"} <= set(lw.fp_modules())
    if torch.cuda.is_available():  # same embeddings from the GPU stem
        batch = next(iter(rows.batches(2)))
        before = {n: p.data_ptr() for n, p in model.named_parameters()}
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the ViT's patch conv in TF32: 1e-3 off
        with lw.stem_on(torch.device("cuda")):
            assert model.get_input_embeddings().weight.is_cuda
            on_gpu = lw.capture_rows(batch)[0].cpu()
        assert all(not p.is_cuda and p.data_ptr() == before[n] for n, p in model.named_parameters())
        torch.testing.assert_close(on_gpu, lw.capture_rows(batch)[0], rtol=1e-4, atol=1e-5)


def test_streamed_gradient_pass_equals_whole_model(monkeypatch) -> None:
    """A model larger than the GPU: each block is placed for its own calls (forward, then recompute and
    backward: twice per batch) and the stats equal the whole-model pass. On CPU the placement is recorded;
    on a GPU the real borrow runs (model kept on the CPU) and matches to float32 rounding."""
    from contextlib import contextmanager

    from jobs.quantize.modality import gradient_pass

    model, lw, rows = tiny_llava(torch.float32)
    batches = list(rows.batches(2))
    whole = modality_grad_stats(lw, batches)

    placed: list[int] = []

    @contextmanager
    def record(block):
        placed.append(next(i for i, b in enumerate(lw.blocks) if b is block))
        yield

    streamed = modality_grad_stats(lw, batches, place=record)
    assert sorted(streamed) == sorted(whole)
    assert all(torch.equal(streamed[k], whole[k]) for k in whole)
    assert placed == [0, 1, 1, 0] * len(batches)  # forward up, backward down, per batch
    for stream in (False, True):  # the worker's two modes, on the CPU: no moves, same numbers
        got = gradient_pass(lw, batches, torch.device("cpu"), stream)
        assert all(torch.equal(got[k], whole[k]) for k in whole)
    if torch.cuda.is_available():
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        for stream in (False, True):
            got = gradient_pass(lw, batches, torch.device("cuda"), stream).to("cpu")
            for k in whole:
                torch.testing.assert_close(got[k], whole[k], rtol=1e-4, atol=1e-9)
            assert all(not p.is_cuda for p in model.parameters())


def test_streamed_pass_borrows_everything_it_uses(monkeypatch) -> None:
    """Every weight the streamed pass touches must be borrowed first: here the model holds NaN and a borrow
    hands a tensor its real values, so a module used without being borrowed turns the stats into NaN."""
    import jobs.quantize.modality as modality
    from tests.jobs.poison import poison_unborrowed

    model, lw, rows = tiny_llava(torch.float32)
    batches = list(rows.batches(2))
    whole = modality_grad_stats(lw, batches)

    poison_unborrowed(monkeypatch, lw)
    got = modality.gradient_pass(lw, batches, torch.device("cpu"), stream=True)
    for k in whole:
        assert torch.equal(got[k], whole[k]), k
