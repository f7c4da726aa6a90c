"""Model evaluation (job=evaluate): perplexity of one model, or two on the same tokens."""
