"""Model evaluation (job=evaluate): a model, and optionally a reference (eval.compare_to), scored on the same held-out
inputs by CPU or GPU workers: perplexity with per-token KL and top-1 agreement, captions, lm-eval tasks."""
