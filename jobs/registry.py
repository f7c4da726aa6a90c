"""Job kinds by name; entries are lazy so composing a spec imports no ML stack."""

from core.registry import Registry

JOBS: Registry = Registry("job kind", "job.kind")
JOBS.register("sft", "jobs.sft.driver:SFTJob")
JOBS.register("quantize", "jobs.quantize.driver:QuantizeJob")
JOBS.register("evaluate", "jobs.evaluate.driver:EvaluateJob")
JOBS.register("sensitivity", "jobs.sensitivity.driver:SensitivityJob")
JOBS.register("inspect", "jobs.inspect.driver:InspectJob")
JOBS.register("pipeline", "jobs.pipeline.driver:PipelineJob")
