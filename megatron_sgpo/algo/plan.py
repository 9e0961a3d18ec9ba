"""The sGPO plan: filtering, group sizes n = clamp(ceil(1/p)), curriculum order, schedule.

One profiling pass fixes, per prompt, whether it is trained on, how many
rollouts its group gets and when it is seen; this module turns profiles into
that plan and the plan into per-step lists of (prompt_id, n).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Hashable, Iterator, Literal, Optional, Sequence

import numpy as np

from megatron_sgpo.algo.allocate import budgeted_sizes
from megatron_sgpo.algo.profile import PromptProfile
from megatron_sgpo.choices import check_choices

_STREAM_ZERO, _STREAM_ORDER, _STREAM_EPOCH = 1, 2, 3


@dataclass(frozen=True)
class PlanConfig:
    """Knobs of the sGPO plan; validated on construction so a bad run fails at start.

    ``drop_above``: prompts with p >= drop_above are trivial and dropped (1.0 drops only p = 1).
    ``keep_unsolvable_fraction``: share of p = 0 prompts kept (each gets n_max).
    ``round_to``: round sizes up to a multiple (n_max must then be a multiple too).
    ``step_rollout_budget``: cap on the sum of group sizes in one step, or None.
    ``fixed_n``: the group size of every prompt in the fixed plan of the GRPO/DAPO baselines.
    ``allocation``: ``clamp`` sizes each prompt by the rule above (scaled down to the step budget if needed);
    ``budgeted`` splits ``step_rollout_budget`` to maximise expected informative groups (algo/allocate.py).
    """

    n_min: int = 2
    n_max: int = 32
    drop_above: float = 1.0
    keep_unsolvable_fraction: float = 0.1
    round_to: int = 1
    step_rollout_budget: Optional[int] = None
    order: Literal["curriculum", "shuffle", "given"] = "curriculum"
    size_from: Literal["p_hat", "posterior_mean"] = "p_hat"
    fixed_n: int = 8
    allocation: Literal["clamp", "budgeted"] = "clamp"

    def __post_init__(self) -> None:
        check_choices(self)
        if not isinstance(self.n_min, int) or self.n_min < 1:
            raise ValueError(f"n_min must be an integer >= 1, got {self.n_min!r}")
        if not isinstance(self.n_max, int):
            raise ValueError(f"n_max must be an integer, got {self.n_max!r}")
        if self.n_min > self.n_max:
            raise ValueError(f"n_min must be <= n_max, got n_min={self.n_min}, n_max={self.n_max}")
        if not 0.0 < self.drop_above <= 1.0:
            raise ValueError(f"drop_above must be in (0, 1], got {self.drop_above}")
        if not 0.0 <= self.keep_unsolvable_fraction <= 1.0:
            raise ValueError(f"keep_unsolvable_fraction must be in [0, 1], got {self.keep_unsolvable_fraction}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ValueError(f"round_to must be an integer >= 1, got {self.round_to!r}")
        if self.n_max % self.round_to:
            raise ValueError(f"n_max={self.n_max} must be a multiple of round_to={self.round_to}")
        if self.step_rollout_budget is not None and self.step_rollout_budget < self.n_min:
            raise ValueError(
                f"step_rollout_budget must be >= n_min={self.n_min}, got {self.step_rollout_budget}"
            )
        if self.fixed_n < 1:
            raise ValueError(f"fixed_n must be >= 1, got {self.fixed_n}")
        if self.allocation == "budgeted" and (self.step_rollout_budget is None or self.round_to != 1):
            raise ValueError("allocation 'budgeted' needs step_rollout_budget set (it splits that budget) and "
                             f"round_to=1 (it adds one rollout at a time), got {self.step_rollout_budget}, "
                             f"{self.round_to}")


def group_size(p: float, cfg: PlanConfig) -> int:
    """n = clamp(ceil(1/p), n_min, n_max), rounded up to ``round_to``; p = 0 gives n_max.

    1/p is the expected number of draws until the first success, so a group of
    that size is likely to hold at least one positive and hence a gradient.
    """
    if not 0.0 <= float(p) <= 1.0:  # also rejects NaN
        raise ValueError(f"success rate p must be in [0, 1], got {p}")
    p = float(p)
    # The small tolerance keeps ceil(1/p) exact for rates like 1/3 despite float error.
    raw = cfg.n_max if p == 0.0 else math.ceil(1.0 / p - 1e-9)
    n = min(max(raw, cfg.n_min), cfg.n_max)
    return min(cfg.round_to * math.ceil(n / cfg.round_to), cfg.n_max)


def fit_to_budget(sizes: Sequence[int], budget: int, n_min: int) -> list[int]:
    """Scale sizes down proportionally so they sum to <= budget, never below n_min.

    Sizes already within budget are returned unchanged. After the proportional
    floor, any remaining excess is taken one rollout at a time from the largest
    group (earliest on ties), which keeps the result deterministic.
    """
    sizes = list(sizes)
    if len(sizes) * n_min > budget:
        raise ValueError(
            f"rollout budget {budget} cannot hold n_min={n_min} for each of {len(sizes)} prompts "
            f"(needs {len(sizes) * n_min})"
        )
    total = sum(sizes)
    if total <= budget:
        return sizes
    scaled = [max(n_min, math.floor(n * budget / total)) for n in sizes]
    while sum(scaled) > budget:
        i = max(range(len(scaled)), key=lambda j: (scaled[j], -j))
        scaled[i] -= 1
    return scaled


@dataclass(frozen=True)
class FilterCounts:
    total: int
    kept: int
    dropped_trivial: int
    dropped_unsolvable: int
    kept_unsolvable: int


@dataclass(frozen=True)
class PlanEntry:
    """``p`` is the rate the size came from, ``posterior`` its Beta shapes (None in a fixed-n baseline plan)."""

    prompt_id: Hashable
    n: int
    p: float | None
    posterior: tuple[float, float] | None = None


@dataclass(frozen=True)
class Plan:
    """Ordered prompts with their group sizes, plus how the filter got there."""

    entries: tuple[PlanEntry, ...]
    counts: FilterCounts
    seed: int
    reshuffle_each_epoch: bool = False
    step_rollout_budget: int | None = None
    n_min: int = 1
    n_max: int | None = None
    allocation: str = "clamp"

    @property
    def total_rollouts(self) -> int:
        """Rollouts in one epoch before any per-step budget scaling."""
        return sum(e.n for e in self.entries)

    def sizes(self) -> dict:
        return {e.prompt_id: e.n for e in self.entries}

    def schedule(
        self, prompts_per_step: int, epochs: int = 1, drop_last: bool = False
    ) -> Iterator[list[tuple[Hashable, int]]]:
        """Yield steps, each a list of (prompt_id, n), epoch after epoch.

        Steps never straddle epochs. The last step of an epoch holds the
        remaining ``len(entries) % prompts_per_step`` prompts; it is yielded
        short unless ``drop_last`` (then those prompts are skipped that epoch).
        With a step budget, each step's sizes go through ``fit_to_budget``, or with ``budgeted`` allocation
        are chosen from the posteriors by ``budgeted_sizes``.
        A shuffled plan is reshuffled each epoch from (seed, epoch).
        """
        if prompts_per_step < 1:
            raise ValueError(f"prompts_per_step must be >= 1, got {prompts_per_step}")
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        for epoch in range(epochs):
            entries = list(self.entries)
            if self.reshuffle_each_epoch and epoch > 0:
                rng = np.random.default_rng([self.seed, _STREAM_EPOCH, epoch])
                entries = [entries[i] for i in rng.permutation(len(entries))]
            for start in range(0, len(entries), prompts_per_step):
                chunk = entries[start : start + prompts_per_step]
                if drop_last and len(chunk) < prompts_per_step:
                    break
                sizes = [e.n for e in chunk]
                if self.allocation == "budgeted":
                    sizes = budgeted_sizes([e.posterior for e in chunk], self.step_rollout_budget, self.n_min,
                                           self.n_max)
                elif self.step_rollout_budget is not None:
                    sizes = fit_to_budget(sizes, self.step_rollout_budget, self.n_min)
                yield [(e.prompt_id, n) for e, n in zip(chunk, sizes)]

    def to_dict(self) -> dict:
        return {
            "entries": [[e.prompt_id, e.n, e.p, e.posterior and list(e.posterior)] for e in self.entries],
            "counts": asdict(self.counts),
            "seed": self.seed,
            "reshuffle_each_epoch": self.reshuffle_each_epoch,
            "step_rollout_budget": self.step_rollout_budget,
            "n_min": self.n_min,
            "n_max": self.n_max,
            "allocation": self.allocation,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(
            entries=tuple(PlanEntry(pid, int(n), None if p is None else float(p), post and tuple(post))
                          for pid, n, p, post in d["entries"]),
            counts=FilterCounts(**d["counts"]),
            seed=int(d["seed"]),
            reshuffle_each_epoch=bool(d["reshuffle_each_epoch"]),
            step_rollout_budget=d["step_rollout_budget"],
            n_min=int(d["n_min"]),
            n_max=d["n_max"],
            allocation=d["allocation"],
        )


def _estimate(profile: PromptProfile, cfg: PlanConfig) -> float:
    return profile.p_hat if cfg.size_from == "p_hat" else profile.posterior_mean


def make_plan(profiles: Sequence[PromptProfile], cfg: PlanConfig, seed: int) -> Plan:
    """Filter, size and order prompts as sGPO prescribes.

    Filtering always uses the empirical p_hat: p_hat >= drop_above is dropped as
    trivial; of the p_hat = 0 prompts, round-half-up(fraction * count) are kept
    (seeded choice) with n_max. ``curriculum`` sorts by p descending (easy to
    hard) with ties in seeded random order; ``shuffle`` is a seeded permutation;
    ``given`` keeps the input order.
    """
    ids = [p.prompt_id for p in profiles]
    if len(set(ids)) != len(ids):
        raise ValueError("prompt ids must be unique")
    trivial = [p for p in profiles if p.p_hat >= cfg.drop_above]
    zero = [p for p in profiles if p.p_hat == 0.0 and p.p_hat < cfg.drop_above]
    n_keep_zero = math.floor(cfg.keep_unsolvable_fraction * len(zero) + 0.5)
    rng_zero = np.random.default_rng([seed, _STREAM_ZERO])
    kept_zero_idx = set(rng_zero.choice(len(zero), size=n_keep_zero, replace=False).tolist()) if zero else set()
    kept_zero_ids = {zero[i].prompt_id for i in kept_zero_idx}
    dropped = {p.prompt_id for p in trivial} | {p.prompt_id for p in zero if p.prompt_id not in kept_zero_ids}
    kept = [p for p in profiles if p.prompt_id not in dropped]

    entries = []
    for p in kept:
        n = cfg.n_max if p.p_hat == 0.0 else group_size(_estimate(p, cfg), cfg)
        entries.append(PlanEntry(p.prompt_id, n, _estimate(p, cfg), (p.alpha, p.beta)))

    rng_order = np.random.default_rng([seed, _STREAM_ORDER])
    perm = rng_order.permutation(len(entries))
    if cfg.order == "curriculum":
        rank = {int(j): r for r, j in enumerate(perm)}
        entries = [entries[i] for i in sorted(range(len(entries)), key=lambda i: (-entries[i].p, rank[i]))]
    elif cfg.order == "shuffle":
        entries = [entries[i] for i in perm]

    counts = FilterCounts(
        total=len(profiles),
        kept=len(entries),
        dropped_trivial=len(trivial),
        dropped_unsolvable=len(zero) - n_keep_zero,
        kept_unsolvable=n_keep_zero,
    )
    return Plan(
        entries=tuple(entries),
        counts=counts,
        seed=seed,
        reshuffle_each_epoch=cfg.order == "shuffle",
        step_rollout_budget=cfg.step_rollout_budget,
        n_min=cfg.n_min,
        n_max=cfg.n_max,
        allocation=cfg.allocation,
    )


def fixed_plan(prompt_ids: Sequence[Hashable], n: int, seed: int) -> Plan:
    """The GRPO baseline: every prompt, the same n, shuffled (reshuffled each epoch)."""
    if n < 1:
        raise ValueError(f"group size n must be >= 1, got {n}")
    ids = list(prompt_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("prompt ids must be unique")
    perm = np.random.default_rng([seed, _STREAM_ORDER]).permutation(len(ids))
    entries = tuple(PlanEntry(ids[i], n, None) for i in perm)
    counts = FilterCounts(len(ids), len(ids), 0, 0, 0)
    return Plan(entries=entries, counts=counts, seed=seed, reshuffle_each_epoch=True, n_min=n)
