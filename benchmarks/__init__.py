"""GPU benchmarks run through the orchestrator itself, side by side with the peer users would write."""
