from dataclasses import dataclass, field


@dataclass
class SearchConfig:
    """job=sensitivity: score candidate formats per handle, then pick one per handle under a bits budget."""

    candidates: list[str] = field(default_factory=lambda: ["w4g128", "w8", "fp16"])  # fp16/bf16: not quantized
    effective_bits: float = 4.5  # budget: total weight bits (scales/zeros included) / weight elements
    score: str = "gradient"  # gradient: sum over tokens of (dL/dY . dY)^2 | loss_delta: the measured loss change
    # what is scored and given one format together; both modes keep each set of Linears a serving engine fuses into
    # one GEMM (q/k/v, gate/up, a block's experts: the family's serving_fused) in one handle, as vLLM needs one scheme
    # per set. serving: those sets, every other block Linear alone | shared_input: also the Linears reading one input.
    # ("linear", each Linear alone, is refused: it split those sets.)
    handles: str = "serving"
    ignore: list[str] = field(default_factory=lambda: ["lm_head"])  # not scored (listed); core/models/select.py
    num_workers: int = 1  # data-parallel scoring actors; scores are sums over tokens, reduced in float64
    use_gpu: str = "auto"  # auto | true | false
    cpus_per_worker: float = 1.0
    threads_per_worker: int = 1
    batch_size: int = 4  # calibration samples per forward/backward
    dtype: str = "auto"  # auto: bfloat16 on GPU, float32 on CPU
