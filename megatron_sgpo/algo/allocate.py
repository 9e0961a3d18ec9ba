"""Budgeted allocation: group sizes that maximise the expected number of informative groups in one step.

sGPO's n = clamp(ceil(1/p)) sizes each prompt on its own; with a step budget of B rollouts the sizes compete.
A group of n rollouts of a prompt with success rate p is informative (non-zero advantage variance) unless all n
agree: P = 1 - p^n - (1-p)^n. Under the prompt's Beta(a, b) posterior the expectation has a closed form,
E[p^n] = prod_{j<n} (a+j)/(a+b+j). The marginal gain of the (n+1)-th rollout, E[p^n (1-p)] + E[(1-p)^n p], falls
with n, so the objective is separable and concave and adding one rollout at a time to the prompt that gains most
is optimal (tests/algo/test_allocate.py checks it against brute force).
"""
from __future__ import annotations

import heapq
from typing import Sequence


def expected_informative(a: float, b: float, n: int) -> float:
    """E over p ~ Beta(a, b) of P(a group of n rollouts holds both a success and a failure)."""
    if not (a > 0 and b > 0):
        raise ValueError(f"posterior shapes must be > 0, got a={a}, b={b}")
    all_pass = all_fail = 1.0
    for j in range(n):
        all_pass *= (a + j) / (a + b + j)
        all_fail *= (b + j) / (a + b + j)
    return 1.0 - all_pass - all_fail


def budgeted_sizes(posteriors: Sequence[tuple[float, float]], budget: int, n_min: int, n_max: int) -> list[int]:
    """Sizes in [n_min, n_max] with sum <= budget maximising the sum of expected informative groups.

    Every prompt starts at n_min; each further rollout goes to the prompt whose expected count rises most (ties:
    the earlier prompt), until the budget is spent or no rollout adds anything.
    """
    if n_min < 1 or n_min > n_max:
        raise ValueError(f"need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
    if len(posteriors) * n_min > budget:
        raise ValueError(f"rollout budget {budget} cannot hold n_min={n_min} for each of {len(posteriors)} prompts "
                         f"(needs {len(posteriors) * n_min})")
    sizes = [n_min] * len(posteriors)
    value = [expected_informative(a, b, n_min) for a, b in posteriors]
    heap = []

    def push(i: int) -> None:
        if sizes[i] < n_max:
            a, b = posteriors[i]
            gain = expected_informative(a, b, sizes[i] + 1) - value[i]
            if gain > 1e-12:
                heapq.heappush(heap, (-gain, i))

    for i in range(len(sizes)):
        push(i)
    left = budget - sum(sizes)
    while left > 0 and heap:
        neg_gain, i = heapq.heappop(heap)
        sizes[i] += 1
        value[i] -= neg_gain
        left -= 1
        push(i)
    return sizes
