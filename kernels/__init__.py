"""Hot GPU code: each op has a torch reference (CPU, tests) and an optional Triton implementation."""
