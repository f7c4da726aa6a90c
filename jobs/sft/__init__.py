"""Supervised fine-tuning: DeepSpeed ZeRO-3 workers under Ray Train."""
