"""Post-training quantization of LLM decoder blocks, layer by layer (job=quantize)."""
