"""Which rollouts reach the optimiser: zero-variance filter and Cost-Aware GRPO sampling.

A group whose rewards are all equal has zero advantages and only costs FLOPs.
Cost-aware sampling spends the policy-gradient budget where |A| (a proxy for
the gradient norm) is large per unit of sqrt(cost), with importance weights to
keep the gradient estimate unbiased.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class SelectionConfig:
    """Which rollouts of a step are trained on, applied in this order.

    ``zero_variance``: drop groups whose rewards are all equal (DAPO's filter; on in ``run.mode=dapo``).
    ``refill``: before that, generate further prompts until the step holds ``train.prompts_per_step``
    informative groups (DAPO's dynamic sampling; every extra rollout is booked).
    ``cost_aware``: then draw ``cost_aware_draws`` samples (0: as many as are left) with
    q ∝ |A|/sqrt(cost), mixed with ``cost_aware_mix`` of uniform, and importance-weight them.
    """

    zero_variance: bool = False
    cost_aware: bool = False
    cost_aware_draws: int = 0
    cost_aware_mix: float = 0.0
    refill: bool = False  # DAPO dynamic sampling: draw more prompts until the step is full (algo/refill.py)
    refill_rounds: int = 8  # at most this many extra generation rounds per step

    def __post_init__(self) -> None:
        if self.refill_rounds < 0:
            raise ValueError(f"refill_rounds must be >= 0, got {self.refill_rounds}")
        if self.cost_aware_draws < 0:
            raise ValueError(f"cost_aware_draws must be >= 0, got {self.cost_aware_draws}")
        if not 0.0 <= self.cost_aware_mix <= 1.0:
            raise ValueError(f"cost_aware_mix must be in [0, 1], got {self.cost_aware_mix}")


@dataclass(frozen=True)
class ZeroVarianceResult:
    keep: np.ndarray  # bool mask over samples
    kept_groups: int
    dropped_groups: int


def zero_variance_filter(rewards: Sequence[float] | np.ndarray, group_ids: Sequence | np.ndarray) -> ZeroVarianceResult:
    """Keep the samples of groups whose rewards are not all equal (DAPO dynamic sampling)."""
    r = np.asarray(rewards, dtype=np.float64)
    g = np.asarray(group_ids)
    if r.ndim != 1 or r.shape != g.shape:
        raise ValueError(f"rewards and group_ids must be 1-D of equal length, got {r.shape} and {g.shape}")
    if np.isnan(r).any():
        raise ValueError("rewards contain NaN")
    keep = np.zeros(r.shape, dtype=bool)
    _, inverse = np.unique(g, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if r.size else 0
    kept = 0
    for k in range(n_groups):
        idx = np.flatnonzero(inverse == k)
        if np.ptp(r[idx]) > 0:
            keep[idx] = True
            kept += 1
    return ZeroVarianceResult(keep=keep, kept_groups=kept, dropped_groups=n_groups - kept)


def sequence_costs(prompt_lens: Sequence[int] | np.ndarray, response_lens: Sequence[int] | np.ndarray) -> np.ndarray:
    """c_i = prompt length + response length: policy-gradient FLOPs grow linearly in it."""
    c = np.asarray(prompt_lens, dtype=np.float64) + np.asarray(response_lens, dtype=np.float64)
    return c


def cost_aware_probs(advantages: np.ndarray, costs: np.ndarray, mix: float = 0.0) -> tuple[np.ndarray, bool]:
    """q_i ∝ |A_i| / sqrt(c_i), then q = (1 - mix) q + mix / N.

    If every advantage is zero, |A| carries no information; q falls back to
    uniform and the returned flag is True.
    """
    a = np.asarray(advantages, dtype=np.float64)
    c = np.asarray(costs, dtype=np.float64)
    if a.ndim != 1 or a.shape != c.shape:
        raise ValueError(f"advantages and costs must be 1-D of equal length, got {a.shape} and {c.shape}")
    if a.size == 0:
        raise ValueError("no samples to select from")
    if np.isnan(a).any() or np.isnan(c).any():
        raise ValueError("advantages and costs must not contain NaN")
    if (c <= 0).any():
        raise ValueError("costs must be > 0")
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    n = a.size
    score = np.abs(a) / np.sqrt(c)
    total = score.sum()
    if total == 0.0:
        return np.full(n, 1.0 / n), True
    q = (1.0 - mix) * score / total + mix / n
    return q / q.sum(), False


@dataclass(frozen=True)
class CostAwareSample:
    """Draws with replacement and their importance weights.

    ``raw_weights`` = 1 / (N q_i): (1/M) sum_j w_j x_{i_j} is an unbiased estimate of
    mean_i x_i over every i with q_i > 0. ``weights`` are those divided by their
    mean over the draw (they average to exactly 1, as in the paper's
    implementation); that self-normalised form is consistent, with O(1/M) bias.
    """

    indices: np.ndarray
    weights: np.ndarray
    raw_weights: np.ndarray
    probs: np.ndarray
    uniform_fallback: bool


def cost_aware_sample(
    advantages: Sequence[float] | np.ndarray,
    costs: Sequence[float] | np.ndarray,
    num_draws: int,
    rng: np.random.Generator | int,
    mix: float = 0.0,
) -> CostAwareSample:
    """Draw M = num_draws samples i.i.d. from q (Cost-Aware GRPO) with importance weights.

    With mix = 0, samples with A_i = 0 are never drawn; they contribute nothing
    to the policy gradient, so the gradient estimate stays unbiased.
    """
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    q, fallback = cost_aware_probs(np.asarray(advantages), np.asarray(costs), mix)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    idx = gen.choice(q.size, size=num_draws, replace=True, p=q)
    raw = 1.0 / (q.size * q[idx])
    return CostAwareSample(
        indices=idx, weights=raw / raw.mean(), raw_weights=raw, probs=q, uniform_fallback=fallback
    )
