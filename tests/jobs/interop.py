"""Exports read the way users' serving stacks read them: the project's reference for one export, and the client of
the plain transformers + compressed-tensors process (plain_transformers.py), started once per session.

Tolerances (float32 exports): compressed-tensors' own decompression gives the project's weights exactly (0.0: the same
library code unpacks them). Transformers' logits equal the project's reload within 1e-5 relative for weight-only
schemes. For schemes that quantize activations (w8a8, w4a8) transformers' CPU fake quant rounds each token with scale
max|x| / 127.5 where vLLM's int8 kernels (and the project's reload) use max|x| / 127: there 3e-2 relative."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tests.jobs.family_models import MOE_FAMILIES

SCRIPT = Path(__file__).with_name("plain_transformers.py")
WEIGHT_ONLY_TOL, ACT_QUANT_TOL = 1e-5, 3e-2
# transformers' gpt-oss loader expects its experts fused (gate_up_proj [E, H, 2I]): per-expert quantized Linears
# are left unread and its experts random (no error raised); vLLM's loader reads them. Weights are still checked.
NOT_LOADABLE_BY_TRANSFORMERS = {"gpt_oss"}


def transformers_limit(export: Path, family: str) -> str | None:
    """Why transformers (5.23, compressed-tensors 0.20.1) cannot load this export on CPU, or None."""
    if family in NOT_LOADABLE_BY_TRANSFORMERS:
        return f"{family}: transformers reads its experts fused only"
    qc = json.loads((export / "config.json").read_text())["quantization_config"]
    if family in MOE_FAMILIES and qc["format"] == "int-quantized":
        # its loader concatenates the experts' stored int8 weights into its fused 3D parameters before anything
        # dequantizes them (pack-quantized experts it dequantizes first); vLLM reads per-expert int8 weights
        return "int-quantized experts: transformers fuses them before dequantizing"
    for group in qc["config_groups"].values():
        if group["format"] == "pack-quantized" and not group["weights"]["symmetric"]:
            # the library packs zero points along the output dim ([out / (32 / bits), groups], as vLLM reads them) but
            # its load path in transformers allocates them unpacked ([out, groups]): a size mismatch on load
            return "asymmetric pack-quantized: transformers allocates the zero points unpacked"
    return None


def write_reference(export: Path, ids: torch.Tensor, out: Path) -> Path:
    """The project's reload of `export`: its logits on `ids` and every quantized Linear's dequantized weight
    (names on disk, as compressed-tensors' decompression names them)."""
    from core.models.export import load_weights
    from core.quant.ct import quantized_modules
    from core.quant.load import dequantized_state, load_quantized, quant_config_of

    model = load_quantized(export)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits.float()
    tensors = load_weights(export)
    weights = dequantized_state(tensors, quant_config_of(export))
    reference = {f"{m}.weight": weights[f"{m}.weight"].float().contiguous() for m in quantized_modules(tensors)}
    save_file({**reference, "input_ids": ids.contiguous(), "logits": logits.contiguous()}, str(out))
    return out


def act_quantized(export: Path) -> bool:
    groups = json.loads((export / "config.json").read_text())["quantization_config"]["config_groups"]
    return any(g.get("input_activations") for g in groups.values())


class PlainTransformers:
    """One long-lived process without project code (its interpreter and transformers import paid once); each
    answer has a deadline."""

    def __init__(self, workdir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.log = workdir / "plain_transformers.log"
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT)], cwd=workdir, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log.open("w"))
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)

    def check(self, export: Path, reference: Path, timeout: float = 300) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps({"export": str(export), "reference": str(reference)}) + "\n")
        self.proc.stdin.flush()
        if not self.selector.select(timeout):
            raise TimeoutError(f"no answer within {timeout} s for {export} (log: {self.log})")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the plain process exited: {self.log.read_text()[-2000:]}")
        answer = json.loads(line)
        assert "error" not in answer, answer["error"]
        assert answer["project_modules"] == [], answer["project_modules"]
        return answer

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def assert_serves(answer: dict[str, Any], export: Path, family: str = "llama") -> None:
    """The export decompresses to the project's weights and, where transformers can load the family, gives the
    project's logits (tolerances: module docstring)."""
    assert answer["weights_max_abs"] == 0.0, (export, answer)
    tol = ACT_QUANT_TOL if act_quantized(export) else WEIGHT_ONLY_TOL
    if transformers_limit(export, family):  # it refuses, or (gpt-oss) loads with its experts left random
        # a transformers that learns to read it fails here, and the check should then be made for real
        assert "load_error" in answer or answer["logits_rel"] > tol, (family, answer)
        return
    assert "load_error" not in answer, (export, answer)
    assert answer["logits_rel"] < tol, (export, answer["logits_rel"], tol)
