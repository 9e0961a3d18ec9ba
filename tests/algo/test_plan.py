"""Group sizes, filtering, ordering and scheduling of the sGPO plan."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_sgpo.algo.allocate import budgeted_sizes
from megatron_sgpo.algo.plan import (
    PlanConfig,
    fit_to_budget,
    fixed_plan,
    group_size,
    make_plan,
)
from megatron_sgpo.algo.profile import PromptProfile


def prof(pid, s, k):
    return PromptProfile(pid, s, k, 10.0, 1 + s, 1 + k - s)


def naive_size(p, n_min, n_max):
    if p == 0:
        return n_max
    m = 1
    while m * p < 1 - 1e-12:  # smallest m with m draws expected to hold one success
        m += 1
    return min(max(m, n_min), n_max)


@pytest.mark.parametrize(
    "p, expected",
    [(1.0, 2), (0.9, 2), (0.5, 2), (1 / 3, 3), (0.3, 4), (0.25, 4), (0.1, 10), (1 / 7, 7), (0.01, 16), (0.0, 16)],
)
def test_group_size_inverse_rate_with_clamps(p, expected):
    assert group_size(p, PlanConfig(n_min=2, n_max=16)) == expected


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 32), st.integers(0, 32), st.integers(1, 64))
def test_group_size_matches_naive(k, s, n_min):
    s = min(s, k)
    cfg = PlanConfig(n_min=n_min, n_max=64)
    assert group_size(s / k, cfg) == naive_size(s / k, n_min, 64)


def test_round_to_multiple_within_n_max():
    cfg = PlanConfig(n_min=1, n_max=16, round_to=4)
    assert [group_size(p, cfg) for p in (1.0, 0.5, 0.2, 1 / 9, 0.01)] == [4, 4, 8, 12, 16]


def test_group_size_rejects_bad_rate():
    with pytest.raises(ValueError, match=r"success rate p must be in \[0, 1\], got 1.5"):
        group_size(1.5, PlanConfig())
    with pytest.raises(ValueError, match=r"got nan"):
        group_size(float("nan"), PlanConfig())
    with pytest.raises(ValueError, match=r"got -0.1"):
        group_size(-0.1, PlanConfig())


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"n_min": 0}, "n_min must be an integer >= 1"),
        ({"n_min": 9, "n_max": 8}, "n_min must be <= n_max, got n_min=9, n_max=8"),
        ({"drop_above": 1.2}, r"drop_above must be in \(0, 1\]"),
        ({"keep_unsolvable_fraction": -0.1}, r"keep_unsolvable_fraction must be in \[0, 1\]"),
        ({"n_max": 10, "round_to": 4}, "n_max=10 must be a multiple of round_to=4"),
        ({"step_rollout_budget": 1}, "step_rollout_budget must be >= n_min=2"),
        ({"order": "random"}, "order must be one of"),
        ({"size_from": "mode"}, "size_from must be one of"),
    ],
)
def test_config_validation(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        PlanConfig(**kwargs)


def mixed_profiles():
    # 2 trivial, 5 unsolvable, 5 in between (p = 3/4, 1/2, 1/2, 1/4, 1/8)
    ps = [prof("t0", 8, 8), prof("t1", 4, 4)]
    ps += [prof(f"z{i}", 0, 8) for i in range(5)]
    ps += [prof("e", 6, 8), prof("m1", 4, 8), prof("m2", 2, 4), prof("h", 2, 8), prof("vh", 1, 8)]
    return ps


def test_filter_counts_and_unsolvable_sizes():
    cfg = PlanConfig(n_min=2, n_max=16, keep_unsolvable_fraction=0.5)
    plan = make_plan(mixed_profiles(), cfg, seed=0)
    c = plan.counts
    # round-half-up(0.5 * 5) = 3 unsolvable kept
    assert (c.total, c.kept, c.dropped_trivial, c.dropped_unsolvable, c.kept_unsolvable) == (12, 8, 2, 2, 3)
    ids = [e.prompt_id for e in plan.entries]
    assert not {"t0", "t1"} & set(ids)
    zeros = [e for e in plan.entries if e.prompt_id.startswith("z")]
    assert len(zeros) == 3 and all(e.n == 16 for e in zeros)
    assert plan.sizes()["e"] == 2 and plan.sizes()["h"] == 4 and plan.sizes()["vh"] == 8


def test_filter_choice_is_seeded():
    cfg = PlanConfig(keep_unsolvable_fraction=0.4)
    chosen = lambda seed: sorted(e.prompt_id for e in make_plan(mixed_profiles(), cfg, seed).entries if e.p == 0)
    assert chosen(3) == chosen(3)
    assert len(chosen(3)) == 2
    assert len({tuple(chosen(s)) for s in range(10)}) > 1


def test_drop_above_threshold():
    plan = make_plan(mixed_profiles(), PlanConfig(drop_above=0.75, keep_unsolvable_fraction=0.0), seed=0)
    assert plan.counts.dropped_trivial == 3 and "e" not in plan.sizes()


def test_curriculum_is_easy_to_hard_with_seeded_ties():
    cfg = PlanConfig(keep_unsolvable_fraction=1.0)
    plan = make_plan(mixed_profiles(), cfg, seed=1)
    ps = [e.p for e in plan.entries]
    assert ps == sorted(ps, reverse=True)
    tie_orders = {tuple(e.prompt_id for e in make_plan(mixed_profiles(), cfg, s).entries if e.p == 0.5)
                  for s in range(8)}
    assert tie_orders == {("m1", "m2"), ("m2", "m1")}
    assert make_plan(mixed_profiles(), cfg, 1) == plan


def test_given_and_shuffle_orders():
    profiles = [prof(f"p{i}", 1 + i % 3, 4) for i in range(9)]
    given_plan = make_plan(profiles, PlanConfig(order="given"), seed=0)
    assert [e.prompt_id for e in given_plan.entries] == [p.prompt_id for p in profiles]
    shuffled = make_plan(profiles, PlanConfig(order="shuffle"), seed=0)
    assert sorted(e.prompt_id for e in shuffled.entries) == sorted(p.prompt_id for p in profiles)
    assert [e.prompt_id for e in shuffled.entries] != [p.prompt_id for p in profiles]


def test_schedule_partial_last_step_and_epochs():
    profiles = [prof(f"p{i}", 1, 2) for i in range(7)]
    plan = make_plan(profiles, PlanConfig(order="given"), seed=0)
    steps = list(plan.schedule(prompts_per_step=3, epochs=2))
    assert [len(s) for s in steps] == [3, 3, 1, 3, 3, 1]
    assert [pid for pid, _ in steps[2]] == ["p6"]
    assert [len(s) for s in plan.schedule(3, epochs=2, drop_last=True)] == [3, 3, 3, 3]
    with pytest.raises(ValueError, match="prompts_per_step must be >= 1"):
        list(plan.schedule(0))


def test_shuffled_plan_reshuffles_each_epoch():
    plan = fixed_plan([f"q{i}" for i in range(20)], n=8, seed=5)
    e0, e1 = (sum(([pid for pid, _ in s] for s in plan.schedule(20, 2)), [])[i * 20 : (i + 1) * 20] for i in (0, 1))
    assert sorted(e0) == sorted(e1) and e0 != e1
    assert all(n == 8 for s in plan.schedule(7) for _, n in s)
    assert plan.counts.kept == 20
    assert type(plan).from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_schedule_applies_budget():
    profiles = [prof("a", 1, 8), prof("b", 1, 8), prof("c", 1, 4)]
    plan = make_plan(profiles, PlanConfig(n_min=2, n_max=8, order="given", step_rollout_budget=10), seed=0)
    (step,) = list(plan.schedule(3))
    assert step == [("a", 4), ("b", 4), ("c", 2)]  # 8,8,4 scaled by 10/20


def test_fit_to_budget_examples_and_error():
    assert fit_to_budget([8, 8, 4], 100, 2) == [8, 8, 4]
    assert fit_to_budget([16, 2, 2], 12, 2) == [8, 2, 2]
    with pytest.raises(ValueError, match=r"rollout budget 5 cannot hold n_min=2 for each of 3 prompts \(needs 6\)"):
        fit_to_budget([4, 4, 4], 5, 2)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=12), st.integers(1, 4), st.integers(1, 400))
def test_fit_to_budget_properties(sizes, n_min, budget):
    sizes = [max(s, n_min) for s in sizes]
    if budget < n_min * len(sizes):
        with pytest.raises(ValueError):
            fit_to_budget(sizes, budget, n_min)
        return
    out = fit_to_budget(sizes, budget, n_min)
    assert sum(out) <= budget
    assert all(n_min <= o <= s for o, s in zip(out, sizes))


def test_plan_roundtrip_through_json():
    plan = make_plan(mixed_profiles(), PlanConfig(keep_unsolvable_fraction=0.4, step_rollout_budget=20), seed=2)
    back = type(plan).from_dict(json.loads(json.dumps(plan.to_dict())))
    assert back == plan
    assert list(back.schedule(3, 2)) == list(plan.schedule(3, 2))


def test_duplicate_ids_rejected():
    with pytest.raises(ValueError, match="prompt ids must be unique"):
        make_plan([prof("a", 1, 2), prof("a", 1, 2)], PlanConfig(), 0)


def test_budgeted_plan_splits_each_step_budget_by_the_profile_posteriors_and_round_trips():
    cfg = PlanConfig(n_min=2, n_max=16, step_rollout_budget=20, allocation="budgeted")
    plan = make_plan(mixed_profiles(), cfg, seed=3)
    steps = list(plan.schedule(prompts_per_step=3))
    post = {e.prompt_id: e.posterior for e in plan.entries}
    for step in steps:
        sizes = [n for _, n in step]
        assert sum(sizes) <= 20 and sizes == budgeted_sizes([post[pid] for pid, _ in step], 20, 2, 16)
    assert post["h"] == (3.0, 7.0)  # the profile's Beta(1 + s, 1 + k - s)
    assert type(plan).from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
