"""A tiny random Qwen3 decoder block and LLM-like hidden states for the algorithm tests."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RotaryEmbedding

from jobs.quantize.algorithms import ALGORITHMS
from jobs.quantize.algorithms.base import BlockResult, quantize_block
from jobs.quantize.algorithms.metrics import block_output_error
from kernels.quant import parse_format

HIDDEN, INTERMEDIATE, HEADS, HEAD_DIM = 128, 256, 4, 32
OUTLIER_CHANNELS = (3, 41, 77, 120)
OUTLIER_SCALE = 20.0
BATCH, SEQ = 4, 32


@dataclass
class TinyBlock:
    block: nn.Module  # FP reference, never modified
    rotary: nn.Module
    calib: list[torch.Tensor]  # calibration batches [BATCH, SEQ, HIDDEN]
    held_out: list[torch.Tensor]

    def run_block(self, block: nn.Module, x: torch.Tensor, k: int = 0) -> torch.Tensor:
        pos = torch.arange(x.shape[1]).unsqueeze(0).expand(x.shape[0], -1)
        return block(x, position_embeddings=self.rotary(x, pos), position_ids=pos)

    def fresh(self) -> nn.Module:
        return copy.deepcopy(self.block)

    def quantize(self, algorithm: str, fmt: str, cfg: dict | None = None, shards=None,
                 symmetric: bool = True) -> tuple[nn.Module, BlockResult]:
        block = self.fresh()
        algo = ALGORITHMS.get(algorithm)(cfg)
        result = quantize_block(algo, block, parse_format(fmt, symmetric), self.run_block, shards or [self.calib])
        return block, result

    def error(self, q_block: nn.Module) -> float:
        """Held-out block output error relative to the FP block's update (y - x)."""
        return block_output_error(self.block, q_block, self.run_block, self.held_out)["rel_err"]


def llm_like_hidden(n: int, gen: torch.Generator, mixing: torch.Tensor) -> list[torch.Tensor]:
    """Correlated channels (real activations are far from white: a decaying spectrum) plus a few
    channels ~20x larger than the rest (the massive activations of real LLMs)."""
    scale = torch.ones(HIDDEN)
    scale[list(OUTLIER_CHANNELS)] = OUTLIER_SCALE
    return [(torch.randn(BATCH, SEQ, HIDDEN, generator=gen) @ mixing) * scale for _ in range(n)]


def _mixing(gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(HIDDEN, HIDDEN, generator=gen))
    spectrum = torch.arange(1, HIDDEN + 1, dtype=torch.float32) ** -1.0
    spectrum = spectrum * HIDDEN**0.5 / spectrum.norm()  # mean channel variance 1
    return q @ torch.diag(spectrum) @ q.T


@pytest.fixture(autouse=True)
def _one_thread():
    # 2 shared cores: torch's default threading makes these tiny ops 20x slower under contention
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny() -> TinyBlock:
    torch.manual_seed(0)
    config = Qwen3Config(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_attention_heads=HEADS,
                         num_key_value_heads=HEADS, head_dim=HEAD_DIM, num_hidden_layers=1)
    config._attn_implementation = "sdpa"  # causal without building a mask
    block = Qwen3DecoderLayer(config, layer_idx=0).eval()
    gen = torch.Generator().manual_seed(1)
    mixing = _mixing(gen)
    return TinyBlock(block, Qwen3RotaryEmbedding(config), llm_like_hidden(8, gen, mixing),
                     llm_like_hidden(4, gen, mixing))
