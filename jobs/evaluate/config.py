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
    batch_size: int = 4  # perplexity: token blocks per forward (per worker)
    # another model dir (the FP model, or any other), evaluated on the same tokens; perplexity adds the model's
    # per-token KL from it (mean, p99, max), top-1 agreement and the perplexity delta
    compare_to: str | None = None
    # workers: each holds the model (and compare_to's) on one GPU, or on the CPU; the batches are split over them
    num_workers: int = 1
    use_gpu: str = "auto"  # auto (GPUs when the cluster has them) | true | false
    dtype: str = "auto"  # auto: bfloat16 on GPU, float32 on CPU | float32 | bfloat16 | float16
    cpus_per_worker: float = 1.0
    threads: int = 1  # torch threads per worker
    # caption (jobs/evaluate/caption.py): num_samples chats of `path`, the last assistant message the reference
    media_root: str | None = None  # relative image paths resolve here (default: the file's directory)
    max_new_tokens: int = 32  # greedy decoding budget per caption
    keywords: dict[str, list[str]] = field(default_factory=dict)  # group -> words: accuracy per group and all
    # lm_eval (jobs/evaluate/harness.py): lm-evaluation-harness tasks from its registry or from eval.task_paths
    tasks: list[str] = field(default_factory=list)
    task_paths: list[str] = field(default_factory=list)  # local or s3:// directories of task YAMLs and their data
    num_fewshot: int | None = None  # None: each task's own
    limit: int | None = None  # at most this many items per task (None: all)
