"""job=sensitivity: per-layer quantization sensitivity and a mixed-precision search under a bits budget."""
