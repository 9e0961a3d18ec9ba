"""make_batches invariants: a plan moves samples, never adds, drops or repeats one."""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from megatron_sgpo.batch import CostModel, make_batches, pad_length, partition, plan_from_assignment
from megatron_sgpo.batch.pack import split_to_count
from megatron_sgpo.model.flops import ModelShape
from megatron_sgpo.platform.layout import ParallelLayout

COST = CostModel.from_shape(ModelShape(hidden=512, layers=4, heads=8, kv_heads=8, head_dim=64, ffn=1536, vocab=32000))


@st.composite
def steps(draw):
    dp = draw(st.integers(1, 8))
    pp = draw(st.sampled_from([1, 2, 4]))
    vpp = draw(st.sampled_from([None, 2])) if pp > 1 else None
    tp = draw(st.sampled_from([1, 2, 4]))
    layout = ParallelLayout(
        dp=dp, pp=pp, vpp=vpp, tp=tp, sequence_parallel=tp > 1 and draw(st.booleans()),
        cp=draw(st.sampled_from([1, 2])), fp8=draw(st.sampled_from([None, "e4m3"])),
    )
    n_groups = draw(st.integers(dp, 4 * dp + 8))
    sizes = draw(st.lists(st.integers(1, 12), min_size=n_groups, max_size=n_groups))
    group_ids = np.repeat(np.arange(n_groups), sizes)
    np.random.default_rng(draw(st.integers(0, 2**32 - 1))).shuffle(group_ids)
    lengths = np.array(draw(st.lists(st.integers(1, 3000), min_size=len(group_ids), max_size=len(group_ids))))
    longest = int(pad_length(lengths, layout).max())
    budget = longest * draw(st.integers(1, 6)) + draw(st.integers(0, 200))
    mode = draw(st.sampled_from(["padded", "packed"]))
    return lengths, group_ids, layout, budget, mode, draw(st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(steps())
def test_plan_invariants(step):
    lengths, group_ids, layout, budget, mode, together = step
    try:
        plan = make_batches(lengths, group_ids, layout, budget, COST, mode=mode, keep_groups_together=together)
    except ValueError as err:  # a documented refusal, not a broken plan
        assume("a micro-batch cannot be empty" not in str(err))
        raise
    assert len(plan.per_rank) == layout.dp
    everything = np.concatenate([b for batches in plan.per_rank for b in batches])
    assert np.array_equal(np.sort(everything), np.arange(len(lengths)))  # each sample exactly once
    counts = {len(batches) for batches in plan.per_rank}
    assert counts == {plan.num_micro_batches}
    if layout.vpp is not None:
        assert plan.num_micro_batches % layout.pp == 0
    padded = pad_length(lengths, layout)
    for batches in plan.per_rank:
        for b in batches:
            assert len(b) > 0
            tokens = len(b) * padded[b].max() if mode == "padded" else padded[b].sum()
            assert tokens <= budget
    if together:
        rank = plan.rank_of()
        for g in np.unique(group_ids):
            assert len(np.unique(rank[group_ids == g])) == 1


def test_over_long_sample_names_index_padded_length_and_budget():
    layout = ParallelLayout(dp=1, fp8="e4m3")
    lengths = np.array([10, 20, 30, 100, 300])
    with pytest.raises(ValueError) as err:
        make_batches(lengths, np.arange(5), layout, 100, COST)
    assert str(err.value).startswith(
        "sample 3 has padded length 112 (length 100), more than max_tokens_per_micro_batch=100; 2 sample(s)"
    )


def test_bad_inputs_are_refused():
    layout = ParallelLayout(dp=4)
    with pytest.raises(ValueError, match="the step has 3 samples, fewer than dp=4"):
        make_batches(np.array([5, 6, 7]), np.arange(3), layout, 100, COST)
    with pytest.raises(ValueError, match="keep_groups_together needs at least dp=4 groups, the step has 2"):
        make_batches(np.arange(1, 9), np.repeat([0, 1], 4), layout, 100, COST, keep_groups_together=True)
    with pytest.raises(ValueError, match="sample 1 has length 0"):
        make_batches(np.array([5, 0, 7, 8]), np.arange(4), layout, 100, COST)
    with pytest.raises(ValueError, match="mode must be one of"):
        make_batches(np.array([5, 6, 7, 8]), np.arange(4), layout, 100, COST, mode="thd")
    with pytest.raises(ValueError, match="group_ids shape"):
        make_batches(np.array([5, 6, 7, 8]), np.arange(3), layout, 100, COST)


def test_rank_short_of_samples_for_the_micro_batch_count_is_an_error():
    layout = ParallelLayout(dp=2)
    lengths = np.array([100, 100, 100, 100])
    padded = pad_length(lengths, layout)
    # rank 0 needs three micro-batches of one sample; rank 1 has a single sample
    with pytest.raises(ValueError, match="rank 1 holds 1 samples but every rank must run 3 micro-batches"):
        plan_from_assignment(np.array([0, 0, 0, 1]), padded, layout, 100, COST, "padded")


def test_short_ranks_split_their_largest_micro_batches():
    padded = np.array([40, 40, 30, 30, 10, 10, 10, 10])
    out = split_to_count([np.arange(4), np.arange(4, 8)], 3, padded, "packed")
    assert sorted(len(b) for b in out) == [2, 2, 4]
    assert sorted(np.concatenate(out).tolist()) == list(range(8))
    assert {frozenset(b.tolist()) for b in out if len(b) == 2} == {frozenset({0, 2}), frozenset({1, 3})}


def test_vpp_rounds_the_micro_batch_count_up_to_a_multiple_of_pp():
    lengths = np.full(40, 100)
    flat = make_batches(lengths, np.arange(40), ParallelLayout(dp=2, pp=4), 500, COST, mode="packed")
    interleaved = make_batches(lengths, np.arange(40), ParallelLayout(dp=2, pp=4, vpp=2), 500, COST, mode="packed")
    assert flat.num_micro_batches == 4  # 20 samples of 100 tokens per rank, 5 per micro-batch
    assert interleaved.num_micro_batches == 4
    five = make_batches(np.full(50, 100), np.arange(50), ParallelLayout(dp=2, pp=4, vpp=2), 500, COST, "packed")
    assert five.num_micro_batches == 8  # 5 needed, rounded up to a multiple of pp=4


def test_padded_micro_batches_group_similar_lengths(sgpo_step):
    lengths, groups = sgpo_step(np.random.default_rng(1), 64)
    layout = ParallelLayout(dp=4)
    plan = make_batches(lengths, groups, layout, 16384, COST, mode="padded")
    padded = pad_length(lengths, layout)
    dense = sum(plan.tokens(r, j) for r in range(4) for j in range(plan.num_micro_batches))
    assert dense <= 1.15 * padded.sum()  # shuffled into micro-batches, the padding would be far more
    same = make_batches(lengths, groups, layout, 16384, COST, mode="padded")
    assert all(np.array_equal(x, y) for a, b in zip(plan.per_rank, same.per_rank) for x, y in zip(a, b))


@pytest.mark.parametrize("mode", ["padded", "packed"])
def test_rank_with_one_long_sample_receives_short_ones_instead_of_failing(mode):
    lengths = np.array([8000] + [100] * 200)
    layout = ParallelLayout(dp=2)
    padded = pad_length(lengths, layout)
    attention_heavy = CostModel(a=1.0, b=1.0)  # the long sample outweighs all the short ones
    alone = partition(attention_heavy(padded), 2)
    assert np.bincount(alone).min() == 1  # cost balance alone puts it on a rank by itself
    with pytest.raises(ValueError, match="holds 1 samples but every rank must run 3 micro-batches"):
        plan_from_assignment(alone, padded, layout, 8192, attention_heavy, mode)
    plan = make_batches(lengths, np.arange(201), layout, 8192, attention_heavy, mode=mode)
    assert {len(b) for b in plan.per_rank} == {plan.num_micro_batches} and plan.num_micro_batches >= 2
    assert sorted(np.concatenate([b for r in plan.per_rank for b in r]).tolist()) == list(range(201))
    assert all(plan.tokens(r, j) <= 8192 for r in range(2) for j in range(plan.num_micro_batches))
