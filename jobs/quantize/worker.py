"""A calibration worker (Ray actor): holds the full model on CPU and calibration batches on its device,
moves one block at a time to the device, observes, quantizes, and pushes its batches through the block
to get the next block's inputs. Activations never leave it.

`self.inputs` are always the inputs of block `self.pos`. Propagation: "quantized" (parallel=data: the
next block sees this block's quantization error, as GPTQ/AWQ are usually run) or "fp" (parallel=blocks:
every block is calibrated on FP inputs, so blocks are independent and workers can take different ones).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from core import storage
from core.blocks.layerwise import Borrow, Layerwise, fits_on, module_tensors, weight_bytes
from core.data.calib_mm import PAD, CalibRows
from core.models import build_model
from core.models.moe import calibrate_all_experts, expert_lists
from jobs.quantize import checkpoint
from jobs.quantize.activations import Activations
from jobs.quantize.algorithms import ALGORITHMS
from jobs.quantize.algorithms.base import GRAM
from jobs.quantize.algorithms.stats import Stats
from jobs.quantize.modality import block_weights, gradient_pass
from kernels.quant import parse_format, parse_target


def build_fp_model(spec: Any, dtype: str = "float32") -> Any:
    """The FP model on CPU (core.models.build_model: random-init models identical in every process)."""
    model = build_model(spec.model, getattr(torch, dtype)).eval()
    model.config.use_cache = False
    return model


def result_digest(result: Any) -> str:
    """What every data-parallel worker must agree on: the integers, scales and zeros it produced."""
    h = hashlib.sha256()
    for name in sorted(result.layers):
        layer = result.layers[name]
        for t in (layer.qweight, layer.scale, layer.zero):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class CalibWorker:
    def __init__(self, spec: Any, rank: int, use_gpu: bool, dtype: str) -> None:
        """The model only (the driver may create workers before its calibration rows exist: start() brings them)."""
        torch.set_num_threads(spec.quant.threads_per_worker)
        self.spec, self.rank = spec, rank
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.fmt = parse_format(spec.quant.format, spec.quant.symmetric)
        self.lw = Layerwise(build_fp_model(spec, dtype))
        self.propagate_fp = spec.quant.parallel == "blocks"
        self.offload = spec.quant.offload_activations
        self.inputs = self._activations()
        self.weights: dict[str, Any] | None = None
        self.pos = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._writing: Future | None = None

    def _activations(self, batches: Any = ()) -> Activations:
        return Activations(self.device, self.offload, batches)

    def start(self, batches: list[CalibRows], formats: dict[str, str], root: str, pos: int = 0) -> int:
        """This worker's calibration batches and the per-Linear formats (mixed precision: full Linear name ->
        format name); the inputs of block `pos`: embeddings, or those saved after block pos - 1 (parallel=data
        resume); and every batch's block calls, captured from the model's forward (core/blocks/layerwise.py)."""
        self.batches, self.formats = batches, formats
        # per batch [B, T]: PAD / TEXT / VISION (core/data/calib_mm.py); MBQ's weights come from the driver
        self.modality = [torch.tensor(b.modality).to(self.device) for b in batches]
        self.padded = [bool((m == PAD).any()) for m in self.modality]
        with self.lw.stem_on(self.device):
            firsts, self.calls = zip(*(self.lw.capture_rows(b) for b in self.batches), strict=True)
        self.calls = list(self.calls)
        self.inputs = self._activations(checkpoint.load_inputs(root, pos - 1, self.rank) if pos else firsts)
        self.pos = pos
        return self.inputs.rows

    def run_block(self, block: torch.nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
        """The current block (or a copy of it) on batch `k`'s hidden states, as the model calls it."""
        return self.lw.run_block(self.index, x, self.calls[k], block)

    def modality_grads(self) -> Any:
        """MBQ's gradient pass over this worker's batches (jobs/quantize/modality.py), on its device."""
        stream = not fits_on(weight_bytes(self.lw.model), self.device)
        if stream:
            print(f"worker {self.rank}: mbq gradient pass: the model is larger than the GPU, streaming blocks")
        return gradient_pass(self.lw, self.batches, self.device, stream).to("cpu")

    def set_modality_weights(self, weights: dict[str, Any] | None) -> None:
        self.weights = weights

    def _on_device(self, index: int) -> torch.nn.Module:
        """Block `index` borrowed onto the device (`_release` gives its CPU tensors back), so nothing is copied
        back to the CPU unless the quantized weights are needed there."""
        block = self.lw.blocks[index]
        self._borrow = Borrow(module_tensors(block), self.device)
        return block

    def _release(self, keep_weights: bool) -> None:
        """Back to the CPU tensors, after copying the device values into them when `keep_weights`."""
        self._borrow.give_back(keep=keep_weights)

    @torch.no_grad()
    def advance_fp(self, index: int) -> None:
        """Run the FP blocks [pos, index) to get block `index`'s FP inputs (blocks mode). The batches stay on
        the device between these blocks (two sets at most, less than a calibrated block holds): streaming them
        through host memory per block doubled the cost of reaching a later worker's first block."""
        if index <= self.pos:
            return
        xs = list(self.inputs)
        for i in range(self.pos, index):
            self._on_device(i)
            xs = [self.lw.run_block(i, x, calls) for x, calls in zip(xs, self.calls, strict=True)]
            self._release(keep_weights=False)
        self.inputs = self._activations(xs)
        self.pos = index

    @torch.no_grad()
    def begin_block(self, index: int) -> None:
        if self.propagate_fp:
            self.advance_fp(index)
        if index != self.pos:
            raise RuntimeError(f"worker {self.rank} holds the inputs of block {self.pos}, not {index}")
        self.index = index
        self.block = self._on_device(index)
        # the FP outputs, for the block's output error after quantization (and blocks mode's next inputs); one pass
        # over this worker's tokens: what the router sent each expert on it
        calibrate_all_experts(self.block)
        self.fp_outputs = self._activations(self.run_block(self.block, x, k) for k, x in enumerate(self.inputs))
        self.routed = {name: experts.routed.tolist() for name, experts in expert_lists(self.block)}
        self.algo = ALGORITHMS.get(self.spec.quant.algorithm)(dict(self.spec.quant.options))
        prefix = self.lw.block_prefix(index)
        own = {n[len(prefix):]: parse_target(f) for n, f in self.formats.items() if n.startswith(prefix)}
        self.algo.prepare(self.block, self.fmt, self.run_block, own)
        weights = block_weights(self.weights, index)
        self.masks = [self.algo.token_masks(m, weights) for m in self.modality]

    def observe(self, pass_idx: int, prior: Stats) -> Stats:
        return self.algo.observe_shard(self.block, self.inputs, pass_idx=pass_idx, prior=prior,
                                       masks=self.masks).to("cpu")

    @torch.no_grad()
    def solve(self, stats: Stats, worker: int, workers: int) -> Any:
        """Expert parallel: quantize this worker's share of the block's Linears (algorithms base.owned) from the
        reduced stats; apply(merged=...) then gives every worker all of them."""
        from jobs.quantize.algorithms.base import BlockResult

        self.algo.share = (worker, workers)
        result = BlockResult()
        try:
            self.algo.quantize(self.block, stats.to(self.device), result)
        finally:
            self.algo.share = None
        return _to_cpu(result)

    @torch.no_grad()
    def apply(self, stats: Stats, root: str, token: str, alone: bool = False, merged: Any = None) -> dict[str, Any]:
        """Quantize (same deterministic result on every worker; expert parallel: adopt the `merged` results of
        every worker's solve), propagate the batches, push the inputs a resume needs under `token` (quantized
        propagation only: FP inputs are recomputed from the embeddings); the caller commits them. `alone`: no
        other worker to agree with (no digest)."""
        result = self.algo.adopt(self.block, merged) if merged is not None else self.algo.apply(self.block, stats)
        sse = update = 0.0
        count = 0
        quantized = self._activations()
        for k, (x, y_ref, modality, padded) in enumerate(
                zip(self.inputs, self.fp_outputs, self.modality, self.padded, strict=True)):
            y = self.run_block(self.block, x, k)
            err, upd = (y.float() - y_ref.float()).square(), (y_ref.float() - x.float()).square()
            if padded:  # right padding: not part of the error
                keep = (modality != PAD).unsqueeze(-1)
                err, upd = err.mul(keep), upd.mul(keep)
            sse += err.sum().item()
            update += upd.sum().item()
            count += int(keep.sum().item()) * y.shape[-1] if padded else y.numel()
            if not self.propagate_fp:
                quantized.append(y)
        outputs = self.fp_outputs if self.propagate_fp else quantized
        self.inputs, self.pos = outputs, self.index + 1
        if not self.propagate_fp:
            final = checkpoint.inputs_dir(root, self.index)
            staged = storage.staging_dir(final, token)
            checkpoint.save_inputs(staged, self.rank, outputs.host())
            storage.push(staged, final, token)
        del self.fp_outputs
        out: dict[str, Any] = {"sse": sse, "update": update, "count": count, "routed": self.routed}
        if not alone:
            out["digest"] = result_digest(result)
        if self.device.type == "cuda":  # since this worker started: the block, its stats and activations
            out["gpu_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if self.rank == 0 or self.propagate_fp:
            out["result"] = _to_cpu(result)
            quantized = {f"{name}.weight" for name in result.layers}  # stored as integers instead
            out["state"] = {k: v.cpu() for k, v in self.block.state_dict().items() if k not in quantized}
        # sequential: later blocks run on top of this one, so its CPU copy takes the quantized weights
        self._release(keep_weights=not self.propagate_fp)
        return out

    def calibrate(self, index: int, root: str) -> dict[str, float]:
        """One block by this worker alone (stats never leave it); returns its metrics. The checkpoint is
        written by a background thread while the next block computes (`flush` waits for it); one write
        is pending at most, and a failed write surfaces at the next call."""
        from jobs.quantize.blockloop import block_metrics, finish_block

        began = time.perf_counter()
        self.begin_block(index)
        stats = Stats()
        for p in range(self.algo.n_passes):
            stats = stats.merged(self.algo.observe_shard(self.block, self.inputs, pass_idx=p, prior=stats,
                                                         masks=self.masks))
            if p + 1 < self.algo.n_passes:  # the Gram matrices wait on the host while later passes capture
                stats = stats.to("cpu", only=GRAM)
        token = uuid.uuid4().hex[:12]
        out = self.apply(stats, root, token, alone=True)
        self.flush()
        metrics = block_metrics([out], out["result"], time.perf_counter() - began)
        self._writing = self._writer.submit(finish_block, root, index, [out], token, metrics, not self.propagate_fp)
        return metrics

    def flush(self) -> None:
        """Wait for the pending checkpoint write (re-raising its error)."""
        if self._writing is not None:
            self._writing.result()
            self._writing = None


def _to_cpu(result: Any) -> Any:
    for layer in result.layers.values():
        layer.qweight, layer.scale, layer.zero = layer.qweight.cpu(), layer.scale.cpu(), layer.zero.cpu()
    result.smoothing = {k: v.cpu() for k, v in result.smoothing.items()}
    return result
