"""`trainer.sequence_parallel=N`: Ulysses sequence parallelism through DeepSpeed's `UlyssesSPAttentionHF` (the
ALST work). Each group of N consecutive ranks trains on one micro-batch, every rank holding 1/N of each row's
tokens; around each attention the group trades sequence for heads (all-to-all), so attention sees whole rows with
1/N of the heads, and everything else (MLP, norms, the loss) runs on the local tokens. A row of L tokens costs
each rank the activations of L/N.

What is added to DeepSpeed's wrapper: packed samples stay apart. DeepSpeed's own registration drops the model's
mask and attends causally over the whole row; here the core attention rebuilds the block-diagonal causal mask
from the gathered position ids (each packed sample restarts at 0), as transformers does for an unsplit row. The
labels are shifted before the split (a shard's last token predicts the next shard's first).

Gradients: DeepSpeed averages over every rank as for data parallelism; train_step's divisor (all target tokens of
the step) makes that the gradient of the step's mean token loss, however the tokens fall across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from core.data.tokenize import IGNORE
from core.errors import ConfigError
from jobs.sft.batches import MicroBatch

ATTENTIONS = ("sdpa", "flex_attention")  # the core attentions given a packed-document mask here


@dataclass(frozen=True)
class Layout:
    """Where a rank sits: its data-parallel group (which rows) and its shard of each row."""

    data_world: int
    data_rank: int
    size: int  # ranks per sequence-parallel group
    shard: int  # this rank's shard of every row


def layout(world: int, rank: int, size: int) -> Layout:
    return Layout(world // size, rank // size, size, rank % size)


def check_sequence_parallel(t: Any) -> None:
    """What the spec alone decides."""
    sp = t.sequence_parallel
    if sp < 1:
        raise ConfigError("trainer.sequence_parallel", f"must be >= 1 (1: off), got {sp}")
    if t.num_workers % sp:
        raise ConfigError("trainer.sequence_parallel", f"{sp} must divide trainer.num_workers ({t.num_workers})")


def check_model(model: Any, sp: int) -> None:
    """What the model decides: a text model whose heads split evenly, with an attention that takes our mask."""
    config = model.config
    if getattr(config, "vision_config", None) is not None:
        raise ConfigError("trainer.sequence_parallel", "splits text models' rows only (a VLM's image tokens are "
                                                       "placed over the whole row)")
    impl = config._attn_implementation
    if impl not in ATTENTIONS:
        raise ConfigError("trainer.sequence_parallel", f"needs model.attn_implementation {' or '.join(ATTENTIONS)}, "
                                                       f"got {impl}")
    windowed = bool(getattr(config, "sliding_window", None)) and getattr(config, "use_sliding_window", True)
    if windowed or "sliding_attention" in (getattr(config, "layer_types", None) or []):
        raise ConfigError("trainer.sequence_parallel", "sliding-window attention is not split here (the rebuilt mask "
                                                       "is causal within each packed sample only)")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    if heads % sp or (kv_heads % sp and sp % kv_heads):
        raise ConfigError("trainer.sequence_parallel", f"{sp} must divide the attention heads ({heads}) and divide "
                                                       f"or be a multiple of the key/value heads ({kv_heads})")


def shard(batch: MicroBatch, where: Layout) -> MicroBatch:
    """This rank's 1/size of every row, labels shifted first (`shifted`: no further shift in the loss). `tokens`
    counted once per group (on shard 0), so the step's global sum stays right."""
    ids, labels, positions = batch.input_ids, batch.labels, batch.position_ids
    length = ids.shape[1]
    if length % where.size:
        raise ValueError(f"row length {length} is not a multiple of trainer.sequence_parallel={where.size}")
    shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE)], dim=1)
    part = slice(where.shard * length // where.size, (where.shard + 1) * length // where.size)
    local = shifted[:, part].contiguous()
    return MicroBatch(ids[:, part].contiguous(), local, positions[:, part].contiguous(),
                      batch.tokens if where.shard == 0 else 0,
                      int((local != IGNORE).sum()), {}, shifted=True)


def packed_causal_mask(position_ids: torch.Tensor, impl: str) -> Any:
    """Causal within each packed sample of the whole rows [batch, length]: a boolean [batch, 1, L, L] for sdpa, a
    BlockMask for flex_attention."""
    docs = (position_ids == 0).cumsum(-1)
    if impl == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def same_sample_causal(b: Any, _h: Any, q: Any, kv: Any) -> Any:
            return (docs[b, q] == docs[b, kv]) & (kv <= q)

        batch, length = position_ids.shape
        return create_block_mask(same_sample_causal, batch, None, length, length, device=position_ids.device)
    length = position_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    return (docs[:, None, :, None] == docs[:, None, None, :]) & causal


def enable(model: Any, size: int, micro_batch: int) -> None:
    """Make `model`'s attention sequence-parallel over groups of `size` consecutive ranks (torch.distributed is
    up). Process-wide: transformers looks attention functions up by name, and this one replaces the model's."""
    import deepspeed.runtime.sequence_parallel.parallel_state_sp as groups
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    check_model(model, size)
    config, impl = model.config, model.config._attn_implementation
    core = ALL_ATTENTION_FUNCTIONS[impl]

    # one mask per forward: every layer gets the model's same local position_ids tensor (a recomputed layer too)
    state: dict[str, Any] = {"local": None, "mask": None}

    def masked_core(module: Any, q: Any, k: Any, v: Any, _mask: Any, *args: Any, **kwargs: Any) -> Any:
        if state["mask"] is None:  # kwargs' position_ids: the whole rows, gathered by the Ulysses module
            state["mask"] = packed_causal_mask(kwargs["position_ids"], impl)
        return core(module, q, k, v, state["mask"], *args, **kwargs)

    import deepspeed

    if not deepspeed.comm.is_initialized():  # DeepSpeed's groups go through its comm: over torch's process group
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    groups.initialize_sequence_parallel(sequence_parallel_size=size)
    ulysses = UlyssesSPAttentionHF(
        attn=masked_core, batch_size=micro_batch, attn_head_count=config.num_attention_heads,
        attn_head_size=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        kv_head_count=config.num_key_value_heads, num_hidden_layers=config.num_hidden_layers,
        process_group=groups.get_sequence_parallel_group(), seq_length_is_variable=True)

    def sequence_parallel_attention(module: Any, q: Any, k: Any, v: Any, _mask: Any, *args: Any,
                                    **kwargs: Any) -> Any:
        if kwargs.get("position_ids") is not state["local"]:  # a new forward
            state.update(local=kwargs.get("position_ids"), mask=None)
        return ulysses(module, q, k, v, None, *args, **kwargs)  # the local mask is for the local shard: dropped

    ALL_ATTENTION_FUNCTIONS[impl] = sequence_parallel_attention
