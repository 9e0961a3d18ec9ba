"""DAPO dynamic sampling with refill: generate more prompts until the step holds its target of informative groups.

Filtering zero-variance groups alone (``selection.zero_variance``) trains on fewer groups as the policy
improves. DAPO instead keeps sampling: while fewer than ``target`` groups have rewards that are not all equal,
draw more prompts and generate them; the step trains on the first ``target`` informative groups. Every group
generated (kept or not) is returned for booking, since its rollouts cost compute.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


def informative(group) -> bool:
    """Rewards not all equal: the group's advantages are not all zero."""
    return len(group.rewards) > 1 and float(np.ptp(np.asarray(group.rewards, dtype=np.float64))) > 0


@dataclass
class RefillResult:
    trained: list  # the first ``target`` informative groups (fewer if the rounds ran out)
    generated: list  # every group generated this step, first batch included, in order
    rounds: int  # refill rounds run
    target: int

    @property
    def short(self) -> int:
        """How many informative groups the step lacks after the last round."""
        return self.target - len(self.trained)


def refill(first: Sequence, draw: Callable[[int, int], list], target: int, max_rounds: int) -> RefillResult:
    """Top ``first`` up to ``target`` informative groups with at most ``max_rounds`` calls of ``draw(round, count)``.

    Each round asks for the missing count divided by the informative rate seen so far (floored at 1/8), so a
    step where few groups are informative over-samples instead of crawling one round per group.
    """
    if target < 1 or max_rounds < 0:
        raise ValueError(f"need target >= 1 and max_rounds >= 0, got {target}, {max_rounds}")
    generated = list(first)
    keep = [g for g in generated if informative(g)]
    rounds = 0
    while len(keep) < target and rounds < max_rounds:
        rate = max(len(keep) / max(len(generated), 1), 1 / 8)
        new = draw(rounds, math.ceil((target - len(keep)) / rate))
        rounds += 1
        if not new:  # nothing left to draw
            break
        generated += new
        keep += [g for g in new if informative(g)]
    return RefillResult(trained=keep[:target], generated=generated, rounds=rounds, target=target)
