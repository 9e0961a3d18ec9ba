"""Communication and sync terms of the step time, and workload parsing, against hand values."""
from pathlib import Path

import pytest

from megatron_sgpo.cluster import ClusterSpec, TrainSetup, load_inputs
from megatron_sgpo.cluster.spec import workload_from_dict
from megatron_sgpo.cluster.timing import bubble_fraction, dp_comm_seconds, sync_seconds, tp_comm_seconds
from megatron_sgpo.model.flops import ModelShape
from megatron_sgpo.platform.layout import ParallelLayout

ROOT = Path(__file__).resolve().parents[2]
CL = ClusterSpec(nodes=2, gpus_per_node=8, gpu_memory_gib=80, peak_bf16_tflops=989,
                 peak_fp8_tflops=1979, hbm_GBps=3350, nvlink_GBps=400, internode_GBps=50)


def test_dp_reduction_uses_nvlink_inside_a_node_and_the_fabric_across():
    p = 1e9
    inside = TrainSetup(ParallelLayout(tp=2, pp=1, dp=4), distributed_optimizer=True)  # one node
    assert dp_comm_seconds(CL, inside, p) == pytest.approx(3 / 4 * p * 6 / 400e9)
    across = TrainSetup(ParallelLayout(tp=8, pp=1, dp=2), distributed_optimizer=False)  # two nodes
    assert dp_comm_seconds(CL, across, p) == pytest.approx(1 / 2 * p * 8 / 50e9)
    assert dp_comm_seconds(CL, TrainSetup(ParallelLayout(tp=8, pp=2, dp=1)), p) == 0.0


def test_tp_traffic_by_hand_and_zero_without_tp():
    m = ModelShape(hidden=1000, layers=8, heads=8, kv_heads=8, ffn=4000, vocab=100)
    lay = ParallelLayout(tp=4, pp=2, dp=2, sequence_parallel=True)
    # 2 all-reduce equivalents x 2(t-1)/t x 2h bytes per token per layer, 4 layers here, half the tokens
    expected = 2 * (2 * 2 * 3 / 4 * 2 * 1000) * 4 * 500 / 400e9
    assert tp_comm_seconds(m, CL, lay, 1000, 2) == pytest.approx(expected)
    assert tp_comm_seconds(m, CL, ParallelLayout(tp=1, pp=2, dp=8), 1000, 2) == 0.0


def test_sync_is_a_stage_gather_then_the_whole_model_into_each_engine_gpu():
    m = ModelShape(hidden=1000, layers=8, heads=8, kv_heads=8, ffn=4000, vocab=100)
    full = 2 * m.total_params()  # bf16
    lay = ParallelLayout(tp=4, pp=2, dp=2)
    gather = 3 / 4 * full / 2 / 400e9  # one stage's TP shards into its sender, over NVLink
    assert sync_seconds(m, CL, lay, colocated=True) == pytest.approx(gather + full / 400e9 + CL.sync_fixed_s)
    assert sync_seconds(m, CL, lay, colocated=False) == pytest.approx(gather + full / 50e9 + CL.sync_fixed_s)
    # more stages shorten each sender's gather; every engine GPU still receives the whole model
    assert sync_seconds(m, CL, ParallelLayout(tp=4, pp=4, dp=1), False) < sync_seconds(m, CL, lay, False)


def test_bubble_shrinks_with_microbatches_and_interleaving():
    assert bubble_fraction(ParallelLayout(tp=1, pp=4, dp=1), 12) == pytest.approx(3 / 12)
    assert bubble_fraction(ParallelLayout(tp=1, pp=4, dp=1, vpp=2), 12) == pytest.approx(3 / 24)


def test_workload_needs_a_group_size_and_rejects_unknown_keys():
    base = dict(prompts_per_step=4, prompt_len=8, response_mean=16, response_sigma=0.5,
                response_max=64)
    with pytest.raises(ValueError, match="group"):
        workload_from_dict(base)
    with pytest.raises(ValueError, match="unknown keys"):
        workload_from_dict({**base, "mean_group_size": 4, "prompts": 3})
    w = workload_from_dict({**base, "group_size_beta": {"alpha": 2, "beta": 3}})
    assert w.group_size_beta.n_max == 64 and w.max_seq == 72


def test_sgpo_example_plans_with_profiling_cost():
    from megatron_sgpo.cluster import Planner
    inputs = load_inputs(ROOT / "examples/configs/llama-3.3-70b-config.json",
                         ROOT / "examples/clusters/h100-8x8-sgpo-70b.yaml")
    pl = Planner(inputs)
    assert 256 * 2 < pl.n_seqs < 256 * 64  # Beta(2,3) group sizes sit between the clamps
    best = pl.rank().feasible[0]
    assert best.time.profile > 0 and best.time.total > best.time.rollout


def test_asynchronous_steps_overlap_rollout_with_training_only_on_separate_engines():
    from megatron_sgpo.cluster import EngineLayout, Placement, PlanInputs, Planner, WorkloadSpec

    model = ModelShape(hidden=1024, layers=8, heads=8, kv_heads=8, ffn=4096, vocab=32000)
    work = dict(prompts_per_step=8, prompt_len=64, response_mean=128, response_sigma=0.5, response_max=448,
                mean_group_size=4)
    setup, eng = TrainSetup(ParallelLayout(tp=2, pp=1, dp=2)), EngineLayout(2, 4)
    for colocated in (True, False):
        place = Placement(True, 2, 2) if colocated else Placement(False, 1, 1)
        sync = Planner(PlanInputs(model, CL, WorkloadSpec(**work))).evaluate(setup, eng, place).time
        ahead = Planner(PlanInputs(model, CL, WorkloadSpec(**work, max_staleness=1))).evaluate(setup, eng, place).time
        assert sync.total == pytest.approx(sync.rollout + sync.logprob + sync.train + sync.sync + sync.offload
                                           + sync.profile)
        assert ahead.overlapped is not colocated
        if colocated:  # same GPUs: nothing overlaps
            assert ahead.total == pytest.approx(sync.total)
        else:
            compute = ahead.logprob + ahead.train + ahead.offload
            assert ahead.total == pytest.approx(max(ahead.rollout, compute) + ahead.sync + ahead.profile)
            assert ahead.total < sync.total
