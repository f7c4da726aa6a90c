"""The quantize job's own code in this process (no Ray: its plumbing is the end-to-end tests' business): compose a
spec, run the calibration worker over every block, write the job's export, reload it with the project's loader.
Shared by the family matrix and the export interoperability tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.models import MODELS
from tests.jobs.family_models import NO_CPU_PROCESSOR, image_rows

CALIB_TEXT = ["calib.num_samples=4", "calib.seq_len=32"]
CALIB_IMAGES = ["calib=image_caption", "calib.num_samples=2", "calib.text_ratio=0.5", "calib.seq_len=160"]


def spec_of(overrides: list[str], storage: Path) -> Any:
    from orchestrator.compose import compose, to_spec

    return to_spec(compose([*overrides, "tracking.enabled=false", f"job.storage={storage}"]))


def calibrate(name: str, path: Path, algorithm: str, fmt: str, storage: Path, extra: tuple[str, ...] = (),
              tag: str = "") -> dict[str, Any]:
    """The quantize job's worker over every block, then the job's export, reloaded with the project's loader."""
    from core.data.calib_mm import model_calibration_rows
    from core.quant.load import load_quantized
    from core.tracking import RunHandle
    from jobs.base import RunContext
    from jobs.quantize.algorithms.stats import reduce_stats
    from jobs.quantize.blockloop import export
    from jobs.quantize.driver import QuantizeJob
    from jobs.quantize.export import write_export
    from jobs.quantize.modality import modality_weights
    from jobs.quantize.worker import CalibWorker, build_fp_model

    calib = CALIB_IMAGES if algorithm == "mbq" and name not in NO_CPU_PROCESSOR else CALIB_TEXT
    job = "-".join(filter(None, [name, algorithm, fmt, tag]))
    overrides = ["job=quantize", "model=hf", f"model.path={path}", f"quant={algorithm}", f"quant.format={fmt}",
                 "quant.batch_size=2", "quant.num_workers=1", *calib, *extra, f"job.name={job}"]
    spec = spec_of(overrides, storage)
    ctx = RunContext(RunHandle("", ""), storage / job, str(storage / job))
    hand_made = algorithm == "mbq" and name in NO_CPU_PROCESSOR  # no processor here: image rows made by hand
    # the driver's own validation (MBQ with hand-made rows: validated as AWQ, which refuses nothing MBQ takes)
    checked = spec_of([*overrides[:3], "quant=awq", *overrides[4:]], storage) if hand_made else spec
    prepared = QuantizeJob().prepare(checked, ctx)
    rows = image_rows(name) if hand_made else model_calibration_rows(spec.calib, MODELS.get("hf"), spec.model)
    worker = CalibWorker(spec, 0, False, "float32")
    root = str(storage / job / "blocks")
    worker.start(rows.batches(spec.quant.batch_size), prepared.formats, root)
    weights = None
    if algorithm == "mbq":
        weights = modality_weights(reduce_stats([worker.modality_grads()]), prepared.num_blocks, rows.counts())
        worker.set_modality_weights(weights)
        assert any(b["grad_vision"] > 0 for b in weights["blocks"]) and rows.counts()["vision"] > 0  # images seen
    metrics = [worker.calibrate(i, root) for i in range(prepared.num_blocks)]
    worker.flush()
    if name in NO_CPU_PROCESSOR:  # the job's export minus the processor it cannot load here
        source = MODELS.get("hf")
        out = write_export(build_fp_model(spec), source.tokenizer(spec.model), root, prepared.fmt,
                           list(spec.quant.ignore), str(storage / job / "export"), {}, ctx.run,
                           fp_modules=prepared.fp_modules)
    else:
        out = export(spec, prepared.fmt, root, ctx, "float32", prepared.formats, prepared.fp_modules, weights)
    return {"export": Path(out), "in_memory": worker.lw.model, "metrics": metrics, "spec": spec,
            "reloaded": load_quantized(out)}
