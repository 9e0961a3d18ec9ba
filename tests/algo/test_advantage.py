"""Per-group advantages for variable group sizes."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from megatron_sgpo.algo.advantage import advantages_by_group, group_advantages


def test_hand_values():
    # group a: [1, 0, 0, 0] mean .25 pop-std sqrt(3)/4 ; group b: [1, 0] mean .5 std .5
    r = [1, 0, 1, 0, 0, 0]
    g = ["a", "b", "b", "a", "a", "a"]
    # note: group a = positions 0,3,4,5 ; group b = positions 1,2
    adv = group_advantages(r, g, eps=0.0)
    s = np.sqrt(3) / 4
    np.testing.assert_allclose(adv, [0.75 / s, -1, 1, -0.25 / s, -0.25 / s, -0.25 / s])


def test_dr_grpo_no_std():
    adv = group_advantages([3.0, 1.0, 2.0, 5.0], [0, 0, 0, 1], scale="none")
    np.testing.assert_allclose(adv, [1.0, -1.0, 0.0, 0.0])


def test_singletons_and_constant_groups_are_zero():
    adv = group_advantages([0.7, 0.1, 0.1, 0.1, 1.0], [0, 1, 1, 1, 2])
    assert np.all(adv == 0.0)


def test_groups_never_mix():
    r1 = group_advantages([1, 0, 0], [0, 0, 0])
    r2 = group_advantages([1, 0, 0, 5, 9, 9, 1], [0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(r1, r2[:3])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=1, max_size=12), min_size=1, max_size=6))
def test_mean_zero_std_one_per_group(groups):
    rewards = np.concatenate([np.array(gr) for gr in groups])
    ids = np.concatenate([np.full(len(gr), i) for i, gr in enumerate(groups)])
    adv = group_advantages(rewards, ids, eps=1e-8)
    for i, gr in enumerate(groups):
        a = adv[ids == i]
        assert abs(a.mean()) < 1e-9
        if np.ptp(gr) > 0:
            assert a.std() == pytest.approx(1.0, abs=1e-6)
        else:
            assert np.all(a == 0)
    listed = advantages_by_group(groups, eps=1e-8)
    np.testing.assert_allclose(np.concatenate(listed), adv)


def test_errors():
    with pytest.raises(ValueError, match=r"rewards contain NaN at positions \[1\]"):
        group_advantages([0.0, float("nan")], [0, 0])
    with pytest.raises(ValueError, match="group 1 is empty"):
        advantages_by_group([[1.0, 0.0], []])
    with pytest.raises(ValueError, match="group 0: rewards contain NaN"):
        advantages_by_group([[float("nan")]])
    with pytest.raises(ValueError, match="rewards is empty"):
        group_advantages([], [])
    with pytest.raises(ValueError, match="equal length"):
        group_advantages([1.0, 0.0], [0])
    with pytest.raises(ValueError, match="scale must be one of"):
        group_advantages([1.0], [0], scale="mad")
