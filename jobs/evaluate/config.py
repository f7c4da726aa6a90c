from dataclasses import dataclass, field


@dataclass
class EvalConfig:
    metric: str = "perplexity"  # a key of jobs.evaluate.registry.EVALUATORS: perplexity | caption
    path: str = "data/text/heldout.txt"  # held-out text (never the calibration file)
    format: str = "text"  # perplexity: core.data.calib.TEXT_SOURCES; caption: core.data.formats.FORMATS
    text_field: str = "text"
    num_samples: int = 32
    seq_len: int = 256
    seed: int = 0
    batch_size: int = 4
    compare_to: str | None = None  # another model dir (FP or quantized), evaluated on the same tokens
    threads: int = 1  # torch threads in the eval actor
    # caption (jobs/evaluate/caption.py): num_samples chats of `path`, the last assistant message the reference
    media_root: str | None = None  # relative image paths resolve here (default: the file's directory)
    max_new_tokens: int = 32  # greedy decoding budget per caption
    keywords: dict[str, list[str]] = field(default_factory=dict)  # group -> words: accuracy per group and all
