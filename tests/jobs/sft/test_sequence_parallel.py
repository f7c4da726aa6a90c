"""trainer.sequence_parallel: the settings' checks, the shard of a packed micro-batch, the packed-sample mask, and
two gloo processes splitting every row whose loss and gradients equal one process's on the whole rows."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoConfig, AutoModelForCausalLM

from core.data.packing import PackedRow
from core.data.tokenize import IGNORE
from core.errors import ConfigError
from jobs.sft.batches import MicroBatch, causal_lm_loss, collate
from jobs.sft.config import TrainerConfig
from jobs.sft.driver import _check_trainer
from jobs.sft.sequence_parallel import Layout, check_model, layout, packed_causal_mask, shard
from tests.conftest import free_port

VOCAB = 61
TOLERANCE = 1e-5  # float32: the same sums, split over two ranks and added in another order


def _model(heads: int = 4, kv_heads: int = 2, attn: str = "sdpa") -> torch.nn.Module:
    config = AutoConfig.for_model("qwen3", vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                                  num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                  head_dim=16, max_position_embeddings=64, tie_word_embeddings=False)
    config._attn_implementation = attn
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def _row(lengths: list[int], seed: int) -> PackedRow:
    """Samples of `lengths` packed in one row: positions restart per sample; each one's first token unlabelled."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (sum(lengths),), generator=g).numpy()
    positions = torch.cat([torch.arange(n) for n in lengths]).numpy()
    labels = ids.copy()
    labels[positions == 0] = IGNORE
    return PackedRow(ids, labels, positions, len(lengths), [])


def _batch() -> MicroBatch:
    return collate([_row([7, 9, 5], 1), _row([12, 6], 2)], pad_id=0, pad_to=24)  # 24: splits over 2 ranks


@pytest.mark.parametrize(("fields", "message"), [
    ({"sequence_parallel": 0}, "must be >= 1"),
    ({"sequence_parallel": 3, "num_workers": 2}, "3 must divide trainer.num_workers"),
])
def test_bad_settings_name_the_field(fields: dict, message: str) -> None:
    _check_trainer(TrainerConfig(sequence_parallel=2, num_workers=4))
    with pytest.raises(ConfigError, match=message) as err:
        _check_trainer(TrainerConfig(**fields))
    assert err.value.field == "trainer.sequence_parallel"


def test_models_that_cannot_split_are_refused() -> None:
    check_model(_model(), 2)
    check_model(_model(heads=4, kv_heads=1), 2)  # one key/value head: replicated on both ranks
    with pytest.raises(ConfigError, match=r"divide the attention heads \(4\)"):
        check_model(_model(), 8)
    with pytest.raises(ConfigError, match="attn_implementation sdpa or flex_attention, got eager"):
        check_model(_model(attn="eager"), 2)
    mistral = AutoConfig.for_model("mistral", vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                   sliding_window=4096)
    mistral._attn_implementation = "sdpa"
    with pytest.raises(ConfigError, match="sliding-window attention is not split here"):
        check_model(AutoModelForCausalLM.from_config(mistral), 2)


@pytest.mark.parametrize(("precision", "sp", "expected"), [("default", 1, None), ("default", 2, 2050),
                                                           ("fp8", 1, 2064), ("fp8", 2, 2080)])
def test_rows_are_padded_so_each_ranks_share_splits_and_aligns(precision: str, sp: int, expected: int | None) -> None:
    from jobs.sft.worker import _pad_to

    padded = _pad_to(TrainerConfig(precision=precision, sequence_parallel=sp), 2049)
    assert padded == expected
    if precision == "fp8":
        assert padded % sp == 0 and (padded // sp) % 16 == 0  # each rank's float8 GEMM over its tokens


def test_shards_hold_the_shifted_labels_and_count_each_token_once() -> None:
    batch = _batch()
    parts = [shard(batch, layout(4, rank, 2)) for rank in (2, 3)]  # data-parallel group 1 of 2
    assert [layout(4, r, 2) for r in (2, 3)] == [Layout(2, 1, 2, 0), Layout(2, 1, 2, 1)]
    shifted = torch.cat([batch.labels[:, 1:], torch.full((2, 1), IGNORE)], dim=1)
    assert torch.equal(torch.cat([p.labels for p in parts], dim=1), shifted)
    assert torch.equal(torch.cat([p.input_ids for p in parts], dim=1), batch.input_ids)
    assert torch.equal(torch.cat([p.position_ids for p in parts], dim=1), batch.position_ids)
    assert sum(p.targets for p in parts) == batch.targets and [p.tokens for p in parts] == [batch.tokens, 0]
    assert all(p.shifted for p in parts)
    with pytest.raises(ValueError, match="not a multiple"):
        shard(collate([_row([5], 3)], pad_id=0), layout(2, 0, 2))


def test_packed_mask_keeps_samples_apart_and_causal() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2]])
    mask = packed_causal_mask(positions, "sdpa")[0, 0]
    docs = [0, 0, 0, 1, 1, 2, 2, 2]
    expected = torch.tensor([[docs[q] == docs[k] and k <= q for k in range(8)] for q in range(8)])
    assert torch.equal(mask, expected)
    from torch.nn.attention.flex_attention import create_mask

    block = packed_causal_mask(positions, "flex_attention")
    assert torch.equal(create_mask(block.mask_mod, 1, None, 8, 8, device="cpu")[0, 0], expected)


def _loss_and_grads(model: torch.nn.Module, batches: list[MicroBatch], divisor: float,
                    chunk_tokens: int) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    total = 0.0
    for batch in batches:
        loss = causal_lm_loss(model, batch, divisor, chunk_tokens)
        loss.backward()
        total += loss.item() * divisor
    return total, {n: p.grad.clone() for n, p in model.named_parameters()}


def _sequence_parallel_rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from jobs.sft.sequence_parallel import enable

        model = _model()
        enable(model, 2, micro_batch=2)
        where, batch = layout(2, rank, 2), _batch()
        results = {}
        for chunk in (0, 5):  # the model's loss, then the chunked one
            local = shard(batch, where)
            # as train_step: DeepSpeed averages gradients over the 2 ranks; the divisor makes that the step's mean
            loss_sum, grads = _loss_and_grads(model, [local], batch.targets / 2, chunk)
            for grad in grads.values():
                dist.all_reduce(grad)
                grad /= 2
            summed = torch.tensor([loss_sum])
            dist.all_reduce(summed)
            results[chunk] = {"loss": summed / batch.targets, **grads}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.e2e
def test_two_ranks_splitting_each_row_match_one_rank_on_whole_rows(tmp_path) -> None:
    out = str(tmp_path / "sp.pt")
    mp.start_processes(_sequence_parallel_rank, args=(free_port(), out), nprocs=2, start_method="spawn")
    split = torch.load(out, weights_only=True)
    model, batch = _model(), _batch()
    for chunk in (0, 5):
        loss_sum, grads = _loss_and_grads(model, [batch], batch.targets, chunk)
        assert split[chunk]["loss"].item() == pytest.approx(loss_sum / batch.targets, rel=TOLERANCE)
        for name, grad in grads.items():
            scale = grad.abs().max().item()
            assert (split[chunk][name] - grad).abs().max().item() <= TOLERANCE * scale, name


@pytest.mark.e2e
def test_the_job_split_over_two_workers_trains_like_one_worker_on_whole_rows(tmp_path, ray_head) -> None:
    """Through the CLI, ZeRO-3 over gloo: 2 workers with sequence_parallel=2 (one data-parallel group) and 1
    worker see the same rows at every step; their losses match through 3 optimizer steps. Side by side on the
    session's head."""
    import json

    from tests.conftest import FAST_SFT, finish_cli, start_cli

    args = [*FAST_SFT, "trainer.max_steps=3", "trainer.checkpoint.export=false", *ray_head.args]
    runs = {name: start_cli([*args, f"job.name={name}", f"job.storage={tmp_path / name}", *extra],  # a store each
                            tmp_path / f"{name}.log", ray_head.env)
            for name, extra in (("split", ["trainer.sequence_parallel=2"]), ("whole", ["trainer.num_workers=1"]))}
    losses = {}
    for name, (proc, log) in runs.items():
        finish_cli(proc, log)
        summary = json.loads((tmp_path / name / name / "summary.json").read_text())
        losses[name] = [e["loss"] for e in summary["losses"]]
    assert len(losses["split"]) == 3 and losses["split"] == pytest.approx(losses["whole"], rel=TOLERANCE)
