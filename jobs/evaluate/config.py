from dataclasses import dataclass


@dataclass
class EvalConfig:
    metric: str = "perplexity"  # a key of jobs.evaluate.metrics.METRICS
    path: str = "data/text/heldout.txt"  # held-out text (never the calibration file)
    format: str = "text"  # a key of core.data.calib.TEXT_SOURCES
    text_field: str = "text"
    num_samples: int = 32
    seq_len: int = 256
    seed: int = 0
    batch_size: int = 4
    compare_to: str | None = None  # another model dir (FP or quantized), evaluated on the same tokens
    threads: int = 1  # torch threads in the eval actor
