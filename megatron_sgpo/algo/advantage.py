"""Group-normalised advantages for groups of different sizes.

sGPO gives every prompt its own group size, so normalisation is done per group
and never across the batch: a sample is only compared with rollouts of the same
prompt.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

SCALES = ("std", "none")


def _check_rewards(r: np.ndarray) -> None:
    if np.isnan(r).any():
        raise ValueError(f"rewards contain NaN at positions {np.flatnonzero(np.isnan(r)).tolist()}")


def _normalise(r: np.ndarray, scale: str, eps: float) -> np.ndarray:
    if r.size <= 1 or np.all(r == r[0]):
        return np.zeros_like(r)
    centred = r - r.mean()
    if scale == "none":
        return centred
    # Population std (ddof=0): the group is the whole set of rollouts we have for
    # the prompt, and it stays defined for groups of two.
    return centred / (r.std() + eps)


def group_advantages(
    rewards: Sequence[float] | np.ndarray,
    group_ids: Sequence | np.ndarray,
    scale: str = "std",
    eps: float = 1e-6,
) -> np.ndarray:
    """A_i = (r_i - mean_g) / (std_g + eps) within each group g (float64, input order).

    ``scale="none"`` drops the division (Dr. GRPO), leaving r_i - mean_g.
    Groups of one sample or of equal rewards get zero advantages.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    r = np.asarray(rewards, dtype=np.float64)
    g = np.asarray(group_ids)
    if r.ndim != 1 or g.ndim != 1 or r.shape != g.shape:
        raise ValueError(f"rewards and group_ids must be 1-D of equal length, got {r.shape} and {g.shape}")
    if r.size == 0:
        raise ValueError("rewards is empty")
    _check_rewards(r)
    out = np.empty_like(r)
    _, inverse = np.unique(g, return_inverse=True)
    for k in range(int(inverse.max()) + 1):
        idx = np.flatnonzero(inverse == k)
        out[idx] = _normalise(r[idx], scale, eps)
    return out


def advantages_by_group(
    groups: Sequence[Sequence[float] | np.ndarray], scale: str = "std", eps: float = 1e-6
) -> list[np.ndarray]:
    """The same rule for a list of per-group reward arrays; an empty group is an error."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    out = []
    for i, grp in enumerate(groups):
        r = np.asarray(grp, dtype=np.float64)
        if r.ndim != 1:
            raise ValueError(f"group {i} must be 1-D, got shape {r.shape}")
        if r.size == 0:
            raise ValueError(f"group {i} is empty")
        if np.isnan(r).any():
            raise ValueError(f"group {i}: rewards contain NaN")
        out.append(_normalise(r, scale, eps))
    return out
