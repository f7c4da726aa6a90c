"""Datasets shared by SFT, calibration and evaluation: readers, tokenization, mixing, packing."""
