from dataclasses import dataclass, field
from typing import Any


@dataclass
class CalibConfig:
    """Calibration tokens: `num_samples` windows of `seq_len` tokens from `path` (core/data/calib.py), or
    with format=mm_chat_jsonl `num_samples` image+caption chats (core/data/calib_mm.py)."""

    path: str = "data/text/train.txt"
    format: str = "text"  # core.data.calib.TEXT_SOURCES (text | jsonl | chat_jsonl) or mm_chat_jsonl
    text_field: str = "text"  # for format=jsonl
    num_samples: int = 128
    seq_len: int = 512  # mm_chat_jsonl: the most tokens a chat may have (images expanded)
    seed: int = 0
    media_root: str | None = None  # mm_chat_jsonl: relative image paths resolve here (default: the file's dir)
    text_ratio: float = 0.0  # mm_chat_jsonl: text windows of text_path per chat, interleaved (0: none)
    text_path: str = "data/text/train.txt"


@dataclass
class QuantConfig:
    algorithm: str = "rtn"  # a key of jobs.quantize.algorithms.ALGORITHMS
    format: str = "w4g128"  # kernels.quant.parse_format: w{bits}[a8][g{group}]
    # the long spelling of `format`: quant.bits=3 quant.group_size=128 means format=w3g128 (group_size 0: per
    # channel); either one replaces that part of `format`, activation bits are kept
    bits: int | None = None
    group_size: int | None = None
    symmetric: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # the algorithm's own config (e.g. awq n_grid)
    num_workers: int = 1  # calibration actors (one per GPU, or CPU actors)
    # data: workers split the calibration batches, stats are reduced per block, each block sees the
    # quantized previous blocks' outputs. blocks: workers take different blocks, each calibrated on FP
    # inputs (independent blocks: scales with workers; no inter-block error compensation). experts: as data, and
    # each worker solves a share of the block's Linears (an MoE's experts round-robin; gptq, rtn): same result
    parallel: str = "data"
    dtype: str = "auto"  # model/activation dtype while calibrating: auto (bfloat16 on GPU, float32 on CPU)
    use_gpu: str = "auto"  # auto | true | false
    cpus_per_worker: float = 1.0
    threads_per_worker: int = 1  # torch threads per actor; keep fixed across resumes (CPU kernels' rounding)
    batch_size: int = 4  # calibration samples per forward; batches, not samples, are split over workers
    # on a GPU: keep the calibration activations in pinned host memory, streamed in one batch ahead
    # (jobs/quantize/activations.py): GPU memory then holds about one block, its statistics and two batches
    offload_activations: bool = True
    ignore: list[str] = field(default_factory=lambda: ["lm_head"])  # left FP; syntax: core/models/select.py
    resume: str = "auto"  # auto: continue from <job_dir>/blocks | never: refuse existing block checkpoints
    export: bool = True
    # mixed precision (conf/quant/mixed.yaml): a sensitivity report (its dir or report.json, local or s3://)
    # or the sensitivity job's MLflow run id; each block Linear gets the format chosen there
    recipe: str | None = None

    def __post_init__(self) -> None:
        if self.bits is not None or self.group_size is not None:
            from kernels.quant.formats import format_name  # only then: composing a spec needs no torch

            self.format = format_name(self.format, self.bits, self.group_size)
