"""Zero-variance filter and Cost-Aware GRPO sampling, including an unbiasedness simulation."""
import numpy as np
import pytest

from megatron_sgpo.algo.select import (
    cost_aware_probs,
    cost_aware_sample,
    sequence_costs,
    zero_variance_filter,
)

ADV = np.array([1.2, -0.4, 0.0, 2.0, -1.0, 0.0, 0.3, -0.8, 0.5, -1.5])
COST = sequence_costs([100] * 10, [50, 400, 10, 900, 20, 300, 60, 5, 700, 150])


def test_zero_variance_filter_counts():
    res = zero_variance_filter([1, 1, 1, 0, 1, 0, 0, 5], ["a", "a", "a", "b", "b", "c", "c", "d"])
    assert res.keep.tolist() == [False, False, False, True, True, False, False, False]
    assert (res.kept_groups, res.dropped_groups) == (1, 3)
    with pytest.raises(ValueError, match="rewards contain NaN"):
        zero_variance_filter([1.0, float("nan")], [0, 0])


def test_probs_follow_formula_and_mixing():
    q, fallback = cost_aware_probs(ADV, COST)
    score = np.abs(ADV) / np.sqrt(COST)
    np.testing.assert_allclose(q, score / score.sum())
    assert not fallback and q[2] == 0.0
    qm, _ = cost_aware_probs(ADV, COST, mix=0.25)
    np.testing.assert_allclose(qm, 0.75 * score / score.sum() + 0.025)
    # cheaper sequences win at equal |A|
    q2, _ = cost_aware_probs(np.array([1.0, -1.0]), np.array([100.0, 400.0]))
    np.testing.assert_allclose(q2, [2 / 3, 1 / 3])


def test_all_zero_advantages_fall_back_to_uniform():
    s = cost_aware_sample(np.zeros(4), np.array([1.0, 2.0, 3.0, 4.0]), 6, rng=0)
    assert s.uniform_fallback
    np.testing.assert_allclose(s.probs, 0.25)
    np.testing.assert_allclose(s.raw_weights, 1.0)


def test_weights_average_to_one_and_match_raw():
    s = cost_aware_sample(ADV, COST, 16, rng=np.random.default_rng(3), mix=0.1)
    assert s.weights.mean() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(s.raw_weights, 1.0 / (10 * s.probs[s.indices]))
    np.testing.assert_allclose(s.weights, s.raw_weights / s.raw_weights.mean())
    again = cost_aware_sample(ADV, COST, 16, rng=np.random.default_rng(3), mix=0.1)
    np.testing.assert_array_equal(s.indices, again.indices)


def _simulate(x, mix, seeds=3000, draws=8):
    est = np.array([
        np.mean(s.raw_weights * x[s.indices])
        for s in (cost_aware_sample(ADV, COST, draws, rng=seed, mix=mix) for seed in range(seeds))
    ])
    q, _ = cost_aware_probs(ADV, COST, mix)
    support = q > 0
    second = np.sum(x[support] ** 2 / (len(x) ** 2 * q[support]))
    stderr = np.sqrt((second - x.mean() ** 2) / (draws * seeds))
    return est.mean(), stderr


def test_importance_weighted_mean_is_unbiased_with_mixing():
    x = np.linspace(-3.0, 5.0, 10) ** 2  # arbitrary values, unrelated to q
    mean, stderr = _simulate(x, mix=0.2)
    assert abs(mean - x.mean()) < 4 * stderr


def test_unbiased_for_gradient_terms_without_mixing():
    # Per-sample gradient contributions are proportional to A_i, hence zero where q_i = 0.
    g = np.array([0.3, 2.0, 7.0, -1.0, 0.5, 9.0, 4.0, -2.0, 1.0, 0.2])
    x = ADV * g
    mean, stderr = _simulate(x, mix=0.0)
    assert abs(mean - x.mean()) < 4 * stderr


def test_self_normalised_weights_are_consistent():
    x = np.linspace(-3.0, 5.0, 10) ** 2
    s = cost_aware_sample(ADV, COST, 200_000, rng=11, mix=0.2)
    assert np.mean(s.weights * x[s.indices]) == pytest.approx(x.mean(), rel=0.02)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"mix must be in \[0, 1\], got 1.5"):
        cost_aware_probs(ADV, COST, mix=1.5)
    with pytest.raises(ValueError, match="costs must be > 0"):
        cost_aware_probs(np.ones(2), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="must not contain NaN"):
        cost_aware_probs(np.array([np.nan]), np.array([1.0]))
    with pytest.raises(ValueError, match="num_draws must be >= 1"):
        cost_aware_sample(ADV, COST, 0, rng=0)
    with pytest.raises(ValueError, match="no samples to select from"):
        cost_aware_probs(np.zeros(0), np.zeros(0))
