from dataclasses import dataclass, field

from omegaconf import MISSING


@dataclass
class DatasetSpec:
    path: str = MISSING
    format: str = "chat_jsonl"  # a key of core.data.formats.FORMATS
    sample_ratio: float = 1.0  # <1 subsamples, >1 repeats (whole copies plus a seeded fraction)
    name: str | None = None
    media_root: str | None = None  # mm_chat_jsonl: relative image paths resolve here (default: the file's dir)


@dataclass
class DataConfig:
    datasets: list[DatasetSpec] = field(default_factory=list)
    max_length: int = 2048  # tokens per sample, before packing
    # right: cut the end | drop: skip the sample (counted) | error. Never through an image's tokens: with
    # right such a sample is dropped (counted, dropped_cut_through_image), with error the job fails
    truncation: str = "right"
    packing: bool = True
    pack_max_length: int = 2048  # tokens per packed row
    shuffle: bool = True
    seed: int = 0
