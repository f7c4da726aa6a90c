"""Where a profiled step's GPU time went, from the Chrome trace `trainer.profile_step` logs (profile/stepN_trace.json):
the step's wall span on the GPU, the time some kernel ran, the idle rest, and the kernels grouped by kind.

    python -m benchmarks.trace_summary step3_trace.json[.gz]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from collections import Counter
from pathlib import Path

# kernel-name fragments -> kind, first match wins
KINDS = [("flash|flex|attention|fmha", "attention"), ("gemm|cutlass|sm90_xmma|nvjet|cublas", "matmul"),
         ("nccl|all_gather|reduce_scatter", "collective"), ("adam|multi_tensor", "optimizer"),
         ("triton", "triton (compiled)"), ("copy|fill|catarray", "copy/fill"),
         ("reduce|norm|sum", "reduction"), ("elementwise|vectorized|unrolled", "elementwise")]


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for pattern, kind in KINDS if re.search(pattern, low)), "other")


def summary(events: list[dict]) -> str:
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    if not kernels:
        return "no GPU kernels in the trace"
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in kernels)
    busy, end = 0.0, spans[0][0]
    for start, stop in spans:  # union of the kernels' intervals (streams overlap)
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    wall = end - spans[0][0]  # to the last kernel's end (not the last-started kernel's)
    by_kind = Counter()
    for e in kernels:
        by_kind[kind_of(e["name"])] += e["dur"]
    lines = [f"GPU span {wall / 1e3:.1f} ms, some kernel running {busy / 1e3:.1f} ms ({100 * busy / wall:.0f}%), "
             f"idle {(wall - busy) / 1e3:.1f} ms; {len(kernels)} kernels", "| kind | ms | share of kernel time |",
             "|---|---|---|"]
    total = sum(by_kind.values())
    lines += [f"| {k} | {v / 1e3:.1f} | {100 * v / total:.0f}% |" for k, v in by_kind.most_common()]
    top = Counter()
    for e in kernels:
        top[e["name"][:90]] += e["dur"]
    lines += ["", "top kernels (ms):"] + [f"  {v / 1e3:8.1f}  {n}" for n, v in top.most_common(15)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trace")
    path = Path(parser.parse_args().trace)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        trace = json.load(f)
    print(summary(trace["traceEvents"] if isinstance(trace, dict) else trace))


if __name__ == "__main__":
    main()
