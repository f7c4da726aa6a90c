"""Round-to-nearest: min/max scales per group or channel, no calibration needed (stats only feed the
output-error metrics; `apply` works with empty stats)."""

from __future__ import annotations

from torch import nn

from jobs.quantize.algorithms.base import BlockResult, QuantAlgorithm
from jobs.quantize.algorithms.stats import Stats
from kernels.quant import get_op


class RTN(QuantAlgorithm):
    name = "rtn"
    splits_by_linear = True
    fp_block_cost = 0.5  # an estimate, not measured: a calibrated block is an observe and an error forward

    def quantize(self, block: nn.Module, stats: Stats, result: BlockResult) -> None:
        quantize_weight = get_op("quantize_weight")
        for name, lin in self.targets(block).items():
            q, scale, zero = quantize_weight(lin.weight, self.fmt_of(name))
            self.commit(block, name, q, scale, zero, result, self.gram(stats, name))
