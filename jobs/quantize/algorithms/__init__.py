"""Quantization algorithms by name (config `quant.algorithm`); entries are lazy so that composing a spec
imports no torch. Each is a base.QuantAlgorithm: prepare -> observe (n_passes) -> apply."""

from core.registry import Registry

ALGORITHMS: Registry = Registry("quantization algorithm", "quant.algorithm")
ALGORITHMS.register("rtn", "jobs.quantize.algorithms.rtn:RTN")
ALGORITHMS.register("gptq", "jobs.quantize.algorithms.gptq:GPTQ")
ALGORITHMS.register("awq", "jobs.quantize.algorithms.awq:AWQ")
ALGORITHMS.register("smoothquant", "jobs.quantize.algorithms.smoothquant:SmoothQuant")
ALGORITHMS.register("mbq", "jobs.quantize.algorithms.mbq:MBQ")
