"""benchmarks/trace_summary.py: busy time is the union of kernel intervals (overlapping streams counted once)."""

from benchmarks.trace_summary import kind_of, summary


def test_overlapping_kernels_count_once_and_the_gap_is_idle() -> None:
    events = [{"cat": "kernel", "name": "sm90_xmma_gemm_bf16", "ts": 0, "dur": 1000},
              {"cat": "kernel", "name": "nccl_all_gather", "ts": 500, "dur": 1000},  # overlaps the GEMM by 500
              {"cat": "kernel", "name": "triton_poi_fused_mul_0", "ts": 3000, "dur": 1000},
              {"cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 9000}]
    text = summary(events)
    assert text.startswith("GPU span 4.0 ms, some kernel running 2.5 ms (62%), idle 1.5 ms; 3 kernels"), text
    assert "| matmul | 1.0 | 33% |" in text and "| collective | 1.0 | 33% |" in text
    assert kind_of("flex_attention_backward_1") == "attention" and kind_of("void at::foo") == "other"


def test_the_span_ends_with_the_kernel_that_ends_last() -> None:
    """A long kernel started first and a short one inside it: the span is the long one's, nothing idle."""
    text = summary([{"cat": "kernel", "name": "ncclKernel_AllGather", "ts": 0, "dur": 5000},
                    {"cat": "kernel", "name": "sm90_gemm", "ts": 100, "dur": 100}])
    assert text.startswith("GPU span 5.0 ms, some kernel running 5.0 ms (100%), idle 0.0 ms; 2 kernels"), text
