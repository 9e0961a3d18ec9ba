"""Beta quantiles against closed forms and the profiling record."""
import math

import pytest
from hypothesis import given, settings, strategies as st

from megatron_sgpo.algo.betadist import beta_cdf, beta_interval, beta_ppf
from megatron_sgpo.algo.profile import ProfilingCost, PromptProfile, profile_prompts


def binomial_tail_cdf(x, a, b):
    """I_x(a, b) for integer shapes = P(Binomial(a+b-1, x) >= a)."""
    n = a + b - 1
    return sum(math.comb(n, j) * x**j * (1 - x) ** (n - j) for j in range(a, n + 1))


@pytest.mark.parametrize("q", [0.0, 0.01, 0.25, 0.5, 0.9, 1.0])
def test_uniform_quantile_is_identity(q):
    assert beta_ppf(q, 1, 1) == pytest.approx(q, abs=1e-12)


@pytest.mark.parametrize("q", [0.01, 0.1, 0.25, 0.5, 0.81, 0.99])
def test_beta_2_1_quantile_is_sqrt(q):
    assert beta_ppf(q, 2, 1) == pytest.approx(math.sqrt(q), abs=1e-12)
    assert beta_ppf(q, 1, 2) == pytest.approx(1 - math.sqrt(1 - q), abs=1e-12)


def test_arcsine_cdf():
    for x in (0.001, 0.1, 0.5, 0.77, 0.999):
        assert beta_cdf(x, 0.5, 0.5) == pytest.approx(2 / math.pi * math.asin(math.sqrt(x)), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.floats(0.001, 0.999))
def test_cdf_matches_binomial_tail(a, b, x):
    assert beta_cdf(x, a, b) == pytest.approx(binomial_tail_cdf(x, a, b), abs=1e-10)
    assert beta_cdf(x, a, b) == pytest.approx(1 - beta_cdf(1 - x, b, a), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.floats(0.3, 300), st.floats(0.3, 300), st.floats(0.001, 0.999))
def test_ppf_inverts_cdf(a, b, q):
    assert beta_cdf(beta_ppf(q, a, b), a, b) == pytest.approx(q, abs=1e-9)


def test_large_shapes_interval_brackets_mean():
    lo, hi = beta_interval(601, 401, 0.95)
    mean = 601 / 1002
    assert lo < mean < hi and hi - lo < 0.07


def test_bad_beta_arguments():
    with pytest.raises(ValueError, match="shape parameters must be finite and > 0"):
        beta_cdf(0.5, 0, 1)
    with pytest.raises(ValueError, match=r"quantile level q must be in \[0, 1\], got 1.5"):
        beta_ppf(1.5, 1, 1)
    with pytest.raises(ValueError, match="credible level"):
        beta_interval(1, 1, 1.0)


def test_profile_prompts_counts_and_posterior():
    rewards = {"a": [1.0, 0.0, 1.0, 0.99], "b": [0.0, 0.0], "c": [2.0]}
    lengths = {"a": [10, 20, 30, 40], "b": [5, 7], "c": [3]}
    plens = {"a": 100, "b": 50, "c": 1}
    profiles, cost = profile_prompts(rewards, lengths, plens, prior=(1, 1))
    a, b, c = profiles
    assert [p.prompt_id for p in profiles] == ["a", "b", "c"]
    assert (a.successes, a.samples, a.p_hat) == (2, 4, 0.5)  # 0.99 < threshold 1.0 is a failure
    assert (a.alpha, a.beta) == (3.0, 3.0)
    assert a.mean_response_len == 25.0
    assert b.p_hat == 0.0 and b.posterior_mean == pytest.approx(1 / 4)
    assert c.p_hat == 1.0 and (c.alpha, c.beta) == (2.0, 1.0)
    # Beta(2, 1): 90% equal-tailed interval is (sqrt(0.05), sqrt(0.95)).
    lo, hi = c.credible_interval(0.9)
    assert (lo, hi) == pytest.approx((math.sqrt(0.05), math.sqrt(0.95)), abs=1e-10)
    assert cost == ProfilingCost(prompt_tokens=4 * 100 + 2 * 50 + 1, generated_tokens=115, num_samples=7)
    assert cost.total_tokens == 616


def test_success_threshold_and_sequence_input():
    profiles, _ = profile_prompts([[0.4, 0.6]], [[1, 1]], [2], success_threshold=0.5, prior=(2, 3))
    (p,) = profiles
    assert p.prompt_id == 0 and p.successes == 1 and (p.alpha, p.beta) == (3.0, 4.0)


def test_nan_reward_names_prompt():
    with pytest.raises(ValueError, match=r"prompt 'q7': NaN reward"):
        profile_prompts({"q7": [1.0, float("nan")]}, {"q7": [1, 2]}, {"q7": 3})


def test_mismatched_inputs():
    with pytest.raises(ValueError, match="2 rewards but 1 lengths"):
        profile_prompts({"x": [1, 0]}, {"x": [1]}, {"x": 3})
    with pytest.raises(ValueError, match="prompt_lens must cover the same prompt ids"):
        profile_prompts({"x": [1]}, {"x": [1]}, {"y": 3})
    with pytest.raises(ValueError, match="no samples"):
        profile_prompts({"x": []}, {"x": []}, {"x": 3})


def test_profile_validation():
    with pytest.raises(ValueError, match=r"successes must be in \[0, samples=2\], got 3"):
        PromptProfile("p", 3, 2, 1.0, 4, 1)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        PromptProfile("p", 0, 0, 1.0, 1, 1)
