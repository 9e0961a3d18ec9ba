"""Budgeted allocation: the expected-informative formula, the budget, and optimality against brute force."""
import itertools

import numpy as np
import pytest

from megatron_sgpo.algo.allocate import budgeted_sizes, expected_informative


def test_expected_informative_matches_hand_values_and_monte_carlo():
    assert expected_informative(1.0, 1.0, 1) == 0.0  # one rollout never disagrees with itself
    assert expected_informative(1.0, 1.0, 2) == pytest.approx(1 / 3)  # E[p^2] = E[(1-p)^2] = 1/3 under U(0, 1)
    rng = np.random.default_rng(0)
    p = rng.beta(2.0, 5.0, 400_000)
    for n in (3, 8):
        mc = np.mean(1 - p**n - (1 - p) ** n)
        assert expected_informative(2.0, 5.0, n) == pytest.approx(mc, abs=3e-3)


POSTERIORS = [(9.0, 1.0), (2.0, 2.0), (1.0, 9.0), (1.5, 6.5)]  # easy, middle, hard, hardish


@pytest.mark.parametrize("budget", [8, 11, 16, 20, 40])
def test_budgeted_sizes_are_optimal_and_within_budget(budget):
    n_min, n_max = 2, 8
    sizes = budgeted_sizes(POSTERIORS, budget, n_min, n_max)
    assert sum(sizes) <= budget and all(n_min <= n <= n_max for n in sizes)

    def value(ns):
        return sum(expected_informative(a, b, n) for (a, b), n in zip(POSTERIORS, ns))

    best = max(value(ns) for ns in itertools.product(range(n_min, n_max + 1), repeat=len(POSTERIORS))
               if sum(ns) <= budget)
    assert value(sizes) == pytest.approx(best, abs=1e-12)
    if budget < n_max * len(POSTERIORS):
        assert sum(sizes) == budget  # every rollout adds something, so none is left unspent


def test_a_generous_budget_goes_to_the_hard_prompt_and_bad_budgets_are_refused():
    # a middle prompt is informative at n = 2 half the time and saturates; a hard one keeps gaining
    sizes = budgeted_sizes([(1.0, 9.0), (5.0, 5.0)], 20, 2, 16)
    assert sizes[0] > sizes[1] and sum(sizes) == 20
    with pytest.raises(ValueError, match="cannot hold n_min=2 for each of 3 prompts"):
        budgeted_sizes([(1.0, 1.0)] * 3, 5, 2, 8)
    with pytest.raises(ValueError, match="posterior shapes must be > 0"):
        expected_informative(0.0, 1.0, 2)
