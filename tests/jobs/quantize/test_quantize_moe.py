"""An MoE model through the quantize job on Ray (attached to the session's head): expert parallel on 2 workers
(each solves a share of the Linears, every worker adopts all) gives the 1-worker export bit for bit; each block
reports how many tokens the router sent its experts; the routers stay FP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.quantize.algorithms.base import owned, solve_unit
from tests.conftest import mlflow_run, run_cli, run_id_of
from tests.jobs.family_models import _text

MOE_GPTQ = ["job=quantize", "model=hf", "quant=gptq", "quant.format=w4g32", "calib.num_samples=8", "calib.seq_len=32",
            "quant.batch_size=2", "cluster.include_dashboard=false"]


def test_shares_cover_every_linear_once_experts_round_robin() -> None:
    names = [f"mlp.experts.{e}.{p}" for e in range(5) for p in ("gate_proj", "up_proj", "down_proj")]
    names += ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
    shares = [owned(names, k, 2) for k in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(names) and not set(shares[0]) & set(shares[1])
    assert {solve_unit(n) for n in shares[1] if solve_unit(n)} == {"1", "3"}  # an expert's Linears stay together
    assert len([n for n in shares[0] if solve_unit(n) is None]) == 2  # attention split too


@pytest.mark.parametrize("algorithm", ["awq"])
def test_expert_parallel_refuses_block_wide_searches(algorithm: str, tmp_path: Path, cli_in_process) -> None:
    result = cli_in_process(["job=quantize", f"quant={algorithm}", "quant.parallel=experts", "--cfg", "job"],
                            tmp_path / "runs")
    assert result.returncode == 2 and "config error: quant.parallel: experts splits" in result.stderr


def test_expert_parallel_equals_one_worker_bit_for_bit(tmp_path: Path, ray_head) -> None:
    model, storage = _text(tmp_path / "models", "qwen3_moe"), tmp_path / "runs"
    common = [*MOE_GPTQ, f"model.path={model}", *ray_head.args]
    one = run_cli([*common, "job.name=one"], storage, env=ray_head.env)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    split = run_cli([*common, "job.name=split", "quant.num_workers=2", "quant.parallel=experts"], storage,
                    env=ray_head.env)
    assert split.returncode == 0, split.stdout[-3000:] + split.stderr[-3000:]
    for name in ("model.safetensors", "config.json"):
        assert (storage / "split" / "export" / name).read_bytes() == (storage / "one" / "export" / name).read_bytes()
    config = json.loads((storage / "one" / "export" / "config.json").read_text())
    assert "re:.*mlp\\.gate$" in config["quantization_config"]["ignore"]  # routers FP, as vLLM serves them
    metrics = mlflow_run(storage, run_id_of(split.stdout)).data.metrics
    assert metrics["mlp.experts.routed_tokens_max"] > 0 and "mlp.experts.experts_never_routed" in metrics
