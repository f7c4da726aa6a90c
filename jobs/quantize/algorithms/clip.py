"""Range clipping shared by the weight-only algorithms (AWQ, GPTQ): shrink each (row, group) range where
that lowers the layer's output error, not the weight error.

The output error of a weight change d on one group is d^T G_gg d, with G_gg the group's diagonal block of
the inputs' x^T x, so the search needs the Gram matrix the algorithm already keeps and no extra pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.errors import ConfigError
from kernels.quant import QuantFormat, get_op


@dataclass
class ClipSearchConfig:
    clip: bool = True
    clip_grid: int = 20  # clip ratios 1 - k / clip_grid ...
    max_shrink: float = 0.5  # ... down to 1 - max_shrink
    # llm-awq skips q/k: their error reaches the output through softmax(q k^T), which the per-output
    # MSE used by the clip search does not model.
    clip_skip: tuple[str, ...] = ("q_proj", "k_proj")

    def validate_clip(self, field_name: str) -> None:
        if self.clip_grid < 1:
            raise ConfigError(f"{field_name}.clip_grid", f"must be >= 1, got {self.clip_grid}")
        if not 0 <= self.max_shrink < 1:
            raise ConfigError(f"{field_name}.max_shrink", f"must be in [0, 1), got {self.max_shrink}")

    def clips(self, name: str) -> bool:
        return self.clip and not any(part in name for part in self.clip_skip)


def group_blocks(gram: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """[n_groups, size, size] float32 diagonal blocks of an n x n Gram matrix (only the blocks are copied)."""
    n = gram.shape[0]
    size = group_size or n
    groups = n // size
    return gram.reshape(groups, size, groups, size).diagonal(dim1=0, dim2=2).permute(2, 0, 1).float()


def search_clip(weight: torch.Tensor, gram: torch.Tensor, fmt: QuantFormat, grid: int = 20,
                max_shrink: float = 0.5, chunk_elements: int = 1 << 25) -> torch.Tensor:
    """[rows, n_groups] range ratio in {1, 1 - 1/grid, ...} > 1 - max_shrink minimising d^T G_gg d per group
    (d: the group's rounding error at that ratio). Rows go `chunk_elements` weights at a time, so the
    temporaries of a 14336-wide Linear stay ~0.5 GB."""
    rows, cols = weight.shape
    size = fmt.group_size or cols
    blocks = group_blocks(gram, fmt.group_size)
    step = max(1, chunk_elements // cols)
    return torch.cat([_search_rows(weight[r:r + step].detach().float(), blocks, fmt, size, grid, max_shrink)
                      for r in range(0, rows, step)])


def _search_rows(w: torch.Tensor, blocks: torch.Tensor, fmt: QuantFormat, size: int, grid: int,
                 max_shrink: float) -> torch.Tensor:
    rows, cols = w.shape
    n_groups = cols // size
    best_loss = torch.full((rows, n_groups), float("inf"), device=w.device)
    best = torch.ones(rows, n_groups, device=w.device)
    fake_quant = get_op("fake_quant")
    for k in range(max(1, int(max_shrink * grid))):
        ratio = 1 - k / grid
        d = (w - fake_quant(w, fmt, ratio)).reshape(rows, n_groups, size)
        loss = torch.einsum("rgi,gij,rgj->rg", d, blocks, d)
        better = loss < best_loss
        best_loss = torch.where(better, loss, best_loss)
        best = torch.where(better, torch.full_like(best, ratio), best)
    return best
