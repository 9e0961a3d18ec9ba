"""Beta distribution CDF and quantiles in pure Python.

Credible bounds on a prompt's success rate need Beta quantiles; scipy is not a
dependency and torch's Beta has no ``icdf``, so the regularized incomplete beta
function is evaluated with a continued fraction and inverted by bisection.
"""
from __future__ import annotations

import math

_CF_MAX_ITER = 500
_CF_EPS = 1e-15
_TINY = 1e-300
_BISECT_ITER = 200


def _check_shape(a: float, b: float) -> None:
    if not (a > 0 and b > 0) or math.isinf(a) or math.isinf(b):
        raise ValueError(f"Beta shape parameters must be finite and > 0, got a={a}, b={b}")


def _continued_fraction(a: float, b: float, x: float) -> float:
    """Modified Lentz evaluation of the incomplete-beta continued fraction."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = _TINY if abs(d) < _TINY else d
    d = 1.0 / d
    h = d
    for m in range(1, _CF_MAX_ITER + 1):
        m2 = 2 * m
        # even step
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = _TINY if abs(d) < _TINY else d
        c = 1.0 + aa / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        h *= d * c
        # odd step
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = _TINY if abs(d) < _TINY else d
        c = 1.0 + aa / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _CF_EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularized incomplete beta I_x(a, b) = P(X <= x) for X ~ Beta(a, b)."""
    _check_shape(a, b)
    if math.isnan(x):
        raise ValueError("x must not be NaN")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The fraction converges fast only on the side x < (a+1)/(a+b+2); use symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return min(1.0, max(0.0, front * _continued_fraction(a, b, x) / a))
    return min(1.0, max(0.0, 1.0 - front * _continued_fraction(b, a, 1.0 - x) / b))


def beta_ppf(q: float, a: float, b: float) -> float:
    """Quantile of Beta(a, b): the x with I_x(a, b) = q, found by bisection.

    Bisection is slower than Newton but cannot diverge for shapes < 1, where the
    density is unbounded at an end point.
    """
    _check_shape(a, b)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile level q must be in [0, 1], got {q}")
    if q == 0.0:
        return 0.0
    if q == 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(_BISECT_ITER):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if beta_cdf(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def beta_interval(a: float, b: float, level: float = 0.9) -> tuple[float, float]:
    """Equal-tailed credible interval holding ``level`` of the Beta(a, b) mass."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"credible level must be in (0, 1), got {level}")
    tail = 0.5 * (1.0 - level)
    return beta_ppf(tail, a, b), beta_ppf(1.0 - tail, a, b)
