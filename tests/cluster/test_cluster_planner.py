"""Planner: divisibility and memory rejections with their numbers, ranking, the NeMo-RL 70B layout."""
import json
from pathlib import Path

import pytest

from megatron_sgpo.cluster import (
    ClusterSpec,
    EngineLayout,
    Placement,
    PlanInputs,
    Planner,
    TrainSetup,
    WorkloadSpec,
    load_inputs,
)
from megatron_sgpo.model.flops import ModelShape
from megatron_sgpo.platform.layout import ParallelLayout

ROOT = Path(__file__).resolve().parents[2]
LLAMA70B = ROOT / "examples/configs/llama-3.3-70b-config.json"
H100_8X8 = ROOT / "examples/clusters/h100-8x8-grpo-70b.yaml"

CLUSTER = ClusterSpec(nodes=1, gpus_per_node=8, gpu_memory_gib=80, peak_bf16_tflops=989,
                      peak_fp8_tflops=1979, hbm_GBps=3350, nvlink_GBps=450, internode_GBps=50)
WORK = WorkloadSpec(prompts_per_step=8, prompt_len=64, response_mean=128, response_sigma=0.5,
                    response_max=448, mean_group_size=4)
COLOC = Placement(True, 1, 1)


def planner(model, cluster=CLUSTER, work=WORK):
    return Planner(PlanInputs(model, cluster, work))


def test_heads_not_divisible_by_tp_is_rejected_with_numbers():
    m = ModelShape(hidden=384, layers=4, heads=6, kv_heads=2, ffn=1024, vocab=1000)
    c = planner(m).evaluate(TrainSetup(ParallelLayout(tp=4, pp=1, dp=2, sequence_parallel=True)),
                            EngineLayout(2, 4), COLOC)
    assert not c.feasible
    assert "heads=6 not divisible by TP=4" in c.reasons
    assert "kv_heads=2 not divisible by TP=4" in c.reasons


def test_layers_not_divisible_by_pp_is_rejected():
    m = ModelShape(hidden=256, layers=3, heads=4, kv_heads=4, ffn=1024, vocab=1000)
    c = planner(m).evaluate(TrainSetup(ParallelLayout(tp=1, pp=2, dp=4)), EngineLayout(1, 8), COLOC)
    assert c.reasons == ["layers=3 not divisible by PP=2"]


def test_memory_over_capacity_is_rejected_with_the_numbers():
    m = ModelShape(hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, vocab=128256)  # ~8B
    small = ClusterSpec(**{**CLUSTER.__dict__, "gpu_memory_gib": 24.0})
    c = planner(m, small).evaluate(TrainSetup(ParallelLayout(tp=1, pp=1, dp=8)),
                                   EngineLayout(8, 1), Placement(True, 1, 1))
    assert not c.feasible
    (why,) = [r for r in c.reasons if r.startswith("memory")]
    assert "> 24.0 GiB" in why and "optimizer" in why
    total = float(why.split()[1])
    assert total == pytest.approx(c.peak_bytes / 2**30, abs=0.05) and total > 24


def test_the_same_layout_fits_on_a_bigger_gpu():
    m = ModelShape(hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, vocab=128256)
    c = planner(m).evaluate(TrainSetup(ParallelLayout(tp=2, pp=1, dp=4, sequence_parallel=True)),
                            EngineLayout(1, 8), COLOC)
    assert c.feasible, c.reasons
    assert c.time.total == pytest.approx(sum(v for k, v in c.time.as_dict().items() if k != "total"))


def test_plan_ranks_feasible_by_step_time_and_explains_every_rejection():
    m = ModelShape(hidden=1024, layers=8, heads=16, kv_heads=8, ffn=4096, vocab=32000)
    p = planner(m).rank()
    times = [c.time.total for c in p.feasible]
    assert times and times == sorted(times)
    assert all(c.reasons for c in p.rejected)
    assert any("not divisible by PP" in c.reasons[0] for c in p.rejected)  # PP=8 with VPP=2


@pytest.fixture(scope="module")
def llama70b():
    return load_inputs(LLAMA70B, H100_8X8)


def test_nemo_rl_70b_recipe_layout_is_feasible_on_8x8_h100(llama70b):
    # NeMo-RL grpo_math_70B_megatron.yaml: Megatron TP4/PP4 on 8x8 H100, vLLM TP8 colocated
    pl = Planner(llama70b)
    c = pl.evaluate(TrainSetup(ParallelLayout(tp=4, pp=4, dp=4, sequence_parallel=True)),
                    EngineLayout(tp=8, engines=8), Placement(True, 8, 8))
    assert c.feasible, c.reasons
    assert c.peak_bytes / 2**30 < 79.6
    assert 30 < c.time.total < 400  # a minute-scale step, not seconds or hours


def test_70b_cannot_train_unsharded(llama70b):
    c = Planner(llama70b).evaluate(TrainSetup(ParallelLayout(tp=1, pp=1, dp=64)),
                                   EngineLayout(8, 8), Placement(True, 8, 8))
    assert not c.feasible and c.reasons[0].startswith("memory")


def test_cli_json_reports_top_layouts_and_checks(capsys):
    from megatron_sgpo.cli import main

    rc = main(["plan", "--model-config", str(LLAMA70B), "--cluster", str(H100_8X8), "--json",
                            "--top", "3", "--check", "colocated,tp=4,pp=4,engine_tp=8"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["top"]) == 3 and doc["checks"][0]["feasible"]
    steps = [t["step_seconds"]["total"] for t in doc["top"]]
    assert steps == sorted(steps)
    assert doc["checks"][0]["step_seconds"]["total"] >= steps[0]
