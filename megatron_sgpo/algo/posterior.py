"""Online Beta posteriors per prompt (beyond the sGPO paper; off by default).

sGPO fixes success rates once, before training; as the policy improves those
rates drift. The tracker folds each training group's rewards into the prompt's
posterior, discounting old evidence by gamma, so group sizes can follow the
policy and a periodic re-profile can be scheduled.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Hashable, Iterable, Sequence

from megatron_sgpo.algo.plan import PlanConfig, group_size
from megatron_sgpo.algo.profile import PromptProfile


@dataclass(frozen=True)
class OnlinePosteriorConfig:
    """``enabled`` is the one switch; ``decay`` is gamma in (0, 1]; ``reprofile_every`` K (0 disables)."""

    enabled: bool = False
    decay: float = 1.0
    reprofile_every: int = 0
    success_threshold: float = 1.0
    prior: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}")
        if not isinstance(self.reprofile_every, int) or self.reprofile_every < 0:
            raise ValueError(f"reprofile_every must be an integer >= 0, got {self.reprofile_every!r}")
        a0, b0 = self.prior
        if not (a0 > 0 and b0 > 0):
            raise ValueError(f"prior shapes must be > 0, got {self.prior}")


class PosteriorTracker:
    """Beta(alpha, beta) per prompt, updated with decayed pseudo-counts.

    update: alpha <- gamma*(alpha - alpha0) + alpha0 + s, and the same for beta
    with the failures, so the prior itself is never decayed away.
    """

    def __init__(self, plan_cfg: PlanConfig, cfg: OnlinePosteriorConfig):
        self.plan_cfg = plan_cfg
        self.cfg = cfg
        self._post: dict[Hashable, list[float]] = {}

    @classmethod
    def from_profiles(
        cls, profiles: Iterable[PromptProfile], plan_cfg: PlanConfig, cfg: OnlinePosteriorConfig
    ) -> "PosteriorTracker":
        t = cls(plan_cfg, cfg)
        for p in profiles:
            t._post[p.prompt_id] = [float(p.alpha), float(p.beta)]
        return t

    def __contains__(self, prompt_id: Hashable) -> bool:
        return prompt_id in self._post

    def posterior(self, prompt_id: Hashable) -> tuple[float, float]:
        a0, b0 = self.cfg.prior
        a, b = self._post.get(prompt_id, (a0, b0))
        return float(a), float(b)

    def update(self, prompt_id: Hashable, rewards: Sequence[float]) -> tuple[float, float]:
        """Fold one group's rewards into the prompt's posterior; returns the new (alpha, beta)."""
        rs = [float(r) for r in rewards]
        if any(math.isnan(r) for r in rs):
            raise ValueError(f"prompt {prompt_id!r}: NaN reward")
        s = sum(1 for r in rs if r >= self.cfg.success_threshold)
        a0, b0 = self.cfg.prior
        a, b = self.posterior(prompt_id)
        g = self.cfg.decay
        new = [g * (a - a0) + a0 + s, g * (b - b0) + b0 + (len(rs) - s)]
        self._post[prompt_id] = new
        return new[0], new[1]

    def posterior_mean(self, prompt_id: Hashable) -> float:
        a, b = self.posterior(prompt_id)
        return a / (a + b)

    def group_size(self, prompt_id: Hashable) -> int:
        """Re-plan from the posterior mean with the plan's clamps and rounding."""
        return group_size(self.posterior_mean(prompt_id), self.plan_cfg)

    def due_for_reprofile(self, step: int) -> bool:
        """True every K steps (step > 0); never when K = 0."""
        k = self.cfg.reprofile_every
        return k > 0 and step > 0 and step % k == 0

    def to_dict(self) -> dict:
        return {
            "plan_cfg": asdict(self.plan_cfg),
            "cfg": {**asdict(self.cfg), "prior": list(self.cfg.prior)},
            "posteriors": [[pid, a, b] for pid, (a, b) in self._post.items()],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PosteriorTracker":
        cfg_d = dict(d["cfg"])
        cfg_d["prior"] = tuple(cfg_d["prior"])
        t = cls(PlanConfig(**d["plan_cfg"]), OnlinePosteriorConfig(**cfg_d))
        for pid, a, b in d["posteriors"]:
            t._post[pid] = [float(a), float(b)]
        return t
