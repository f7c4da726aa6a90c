"""The typed job spec: one root schema whose sections are the components' own configs."""

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from core.cluster import ClusterConfig
from core.console import LogConfig
from core.data.config import DataConfig
from core.models.config import ModelConfig
from core.tracking import TrackingConfig
from jobs.evaluate.config import EvalConfig
from jobs.pipeline.config import PipelineConfig
from jobs.quantize.config import CalibConfig, QuantConfig
from jobs.sensitivity.config import SearchConfig
from jobs.sft.config import TrainerConfig


@dataclass
class JobConfig:
    kind: str = MISSING  # a key of jobs.registry.JOBS
    name: str | None = None  # stable name: checkpoints/exports live under <storage>/<name>; None: generated
    storage: str = "runs"  # root for this job's outputs and the default MLflow store (local path)
    parent_run: str | None = None  # MLflow run id this job derives from (recorded as a tag)


@dataclass
class RunSpec:
    job: JobConfig = field(default_factory=JobConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    calib: CalibConfig = field(default_factory=CalibConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    log: LogConfig = field(default_factory=LogConfig)  # what the console shows (core/console/config.py)


ConfigStore.instance().store(name="run_schema", node=RunSpec)
