from dataclasses import dataclass, field


@dataclass
class GateConfig:
    """Bounds on the evaluate stage's metrics (its summary, as `job=evaluate` prints them) for the quantized export
    to be published as the pipeline's result; None: not checked. Metrics against eval.compare_to (the FP model)."""

    max_kl_mean: float | None = None  # mean KL(FP || quantized) of the next-token distributions per token
    max_kl_p99: float | None = None
    min_top1_agreement: float | None = None  # share of tokens whose argmax agrees with the FP model's
    max_delta_perplexity: float | None = None  # perplexity minus the FP model's
    max_perplexity_ratio: float | None = None  # perplexity over the FP model's
    # any metric of the evaluate summary: "<metric> <= <bound>" or "<metric> >= <bound>", e.g. a task's accuracy
    checks: list[str] = field(default_factory=list)


@dataclass
class PipelineConfig:
    """job=pipeline: stages run in this order (a subsequence of sft, sensitivity, quantize, evaluate), each a job of
    its kind reading the spec's own sections, its inputs wired from the stages before it (jobs/pipeline/plan.py)."""

    stages: list[str] = field(default_factory=lambda: ["sft", "sensitivity", "quantize", "evaluate"])
    gate: GateConfig = field(default_factory=GateConfig)
