"""Sequential profiling: sample a prompt in rounds and stop once its posterior has decided (beyond the paper).

The plan only needs to know, per prompt, whether it is trivially solved, hopeless, or in between (and then
roughly how hard). k samples for every prompt overpays for the clear cases. Here a prompt gets ``round_size``
samples at a time, up to k; after each round its Beta posterior's equal-tailed credible interval [lo, hi] at
``confidence`` is compared with three regions: p <= unsolvable_below, unsolvable_below < p < solved_above,
p >= solved_above. Once the interval lies inside one region the prompt stops. The profile then holds the
samples actually drawn, and the plan uses them as it uses k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron_sgpo.algo.betadist import beta_interval

Decision = Literal["unsolvable", "between", "solved"]


@dataclass(frozen=True)
class SequentialRule:
    round_size: int = 2
    confidence: float = 0.8
    unsolvable_below: float = 0.3
    solved_above: float = 0.7
    prior: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if self.round_size < 1:
            raise ValueError(f"round_size must be >= 1, got {self.round_size}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if not 0.0 < self.unsolvable_below < self.solved_above < 1.0:
            raise ValueError(f"need 0 < unsolvable_below < solved_above < 1, got {self.unsolvable_below}, "
                             f"{self.solved_above}")

    def decide(self, successes: int, failures: int) -> Decision | None:
        """The region the posterior's credible interval lies in, or None while it straddles a boundary."""
        lo, hi = beta_interval(self.prior[0] + successes, self.prior[1] + failures, self.confidence)
        if hi <= self.unsolvable_below:
            return "unsolvable"
        if lo >= self.solved_above:
            return "solved"
        if lo > self.unsolvable_below and hi < self.solved_above:
            return "between"
        return None
