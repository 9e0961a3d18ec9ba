"""Response lengths and group sizes: the two distributions that set an sGPO step's cost.

Response lengths are log-normal (mean, sigma of the log), cut at the generation limit. The step
waits for the longest response of the batch; its expected value over n samples is taken as the
n/(n+1) quantile (the usual order-statistic approximation), capped at the limit.
Group sizes follow the sGPO rule n = clamp(ceil(1/p), n_min, n_max) with p ~ Beta from profiling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from statistics import NormalDist

import numpy as np

from .spec import GroupSizeBeta, WorkloadSpec

_STD = NormalDist()


@dataclass(frozen=True)
class LengthDist:
    mean: float  # of the un-truncated log-normal
    sigma: float
    max_len: int

    @property
    def mu(self) -> float:
        return math.log(self.mean) - self.sigma**2 / 2

    def sf(self, x: np.ndarray) -> np.ndarray:
        """P(length > x) after truncation at max_len."""
        x = np.asarray(x, dtype=float)
        z = (np.log(np.maximum(x, 1e-9)) - self.mu) / max(self.sigma, 1e-9)
        out = 1.0 - np.vectorize(_STD.cdf)(z)
        return np.where(x >= self.max_len, 0.0, out)

    @cached_property
    def _grid(self) -> np.ndarray:
        return np.linspace(0.0, float(self.max_len), 4097)

    @cached_property
    def truncated_mean(self) -> float:
        """E[min(X, max)] = integral of the survival function up to max."""
        g = self._grid
        return float(np.trapezoid(self.sf(g), g))

    @cached_property
    def truncated_second_moment(self) -> float:
        """E[min(X, max)^2] = integral of 2 x sf(x) up to max."""
        g = self._grid
        return float(np.trapezoid(2.0 * g * self.sf(g), g))

    @property
    def frac_truncated(self) -> float:
        return float(1.0 - _STD.cdf((math.log(self.max_len) - self.mu) / self.sigma))

    def expected_max(self, n: int) -> float:
        """Longest of n responses: the n/(n+1) quantile, capped at max_len."""
        if n <= 1:
            return min(self.mean, self.max_len)
        q = math.exp(self.mu + self.sigma * _STD.inv_cdf(n / (n + 1.0)))
        return float(min(q, self.max_len))


def mean_group_size_beta(g: GroupSizeBeta, samples: int = 200_000, seed: int = 0) -> float:
    """E[clamp(ceil(1/p), n_min, n_max)] for p ~ Beta(alpha, beta) (seeded Monte Carlo)."""
    p = np.random.default_rng(seed).beta(g.alpha, g.beta, size=samples)
    n = np.ceil(1.0 / np.maximum(p, 1e-12))
    return float(np.clip(n, g.n_min, g.n_max).mean())


def mean_group_size(w: WorkloadSpec) -> float:
    if w.group_size_beta is not None:
        return mean_group_size_beta(w.group_size_beta)
    return float(w.mean_group_size)


def sequences_per_step(w: WorkloadSpec) -> int:
    return int(round(w.prompts_per_step * mean_group_size(w)))


def response_dist(w: WorkloadSpec) -> LengthDist:
    return LengthDist(w.response_mean, w.response_sigma, w.response_max)
