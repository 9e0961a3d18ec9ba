"""Per-prompt success-rate profiles from k samples under the initial policy (sGPO).

The profile is the single offline measurement that drives filtering, group sizes
and the curriculum; a Beta posterior is kept beside the empirical rate so that a
prompt seen only a few times carries its uncertainty.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence, Union

from megatron_sgpo.algo.betadist import beta_interval

PromptId = Hashable
PerPrompt = Union[Mapping[PromptId, Sequence[float]], Sequence[Sequence[float]]]


@dataclass(frozen=True)
class PromptProfile:
    """Profiling result of one prompt; ``alpha``/``beta`` are posterior shapes (prior included)."""

    prompt_id: PromptId
    successes: int
    samples: int
    mean_response_len: float
    alpha: float
    beta: float

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"prompt {self.prompt_id!r}: samples must be >= 1, got {self.samples}")
        if not 0 <= self.successes <= self.samples:
            raise ValueError(
                f"prompt {self.prompt_id!r}: successes must be in [0, samples={self.samples}], "
                f"got {self.successes}"
            )
        if not (self.alpha > 0 and self.beta > 0):
            raise ValueError(
                f"prompt {self.prompt_id!r}: posterior shapes must be > 0, "
                f"got alpha={self.alpha}, beta={self.beta}"
            )

    @property
    def p_hat(self) -> float:
        """Empirical success rate s/k; the quantity the sGPO rules use."""
        return self.successes / self.samples

    @property
    def posterior_mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def credible_interval(self, level: float = 0.9) -> tuple[float, float]:
        """Equal-tailed Beta credible interval (lower, upper) for the success rate."""
        return beta_interval(self.alpha, self.beta, level)

    def lower_bound(self, level: float = 0.9) -> float:
        return self.credible_interval(level)[0]

    def upper_bound(self, level: float = 0.9) -> float:
        return self.credible_interval(level)[1]


@dataclass(frozen=True)
class ProfilingCost:
    """Tokens spent by the profiling pass, for the compute ledger.

    ``prompt_tokens`` counts the prompt once per sample (as submitted to the
    engine); prefix caching can make the real prefill cheaper.
    """

    prompt_tokens: int
    generated_tokens: int
    num_samples: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens


def _as_mapping(values: PerPrompt | Mapping[PromptId, float], name: str) -> dict:
    if isinstance(values, Mapping):
        return dict(values)
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a mapping or a sequence, got {type(values).__name__}")
    return dict(enumerate(values))


def profile_prompts(
    rewards_per_prompt: PerPrompt,
    lengths_per_prompt: PerPrompt,
    prompt_lens: Mapping[PromptId, int] | Sequence[int],
    success_threshold: float = 1.0,
    prior: tuple[float, float] = (1.0, 1.0),
) -> tuple[list[PromptProfile], ProfilingCost]:
    """Profile prompts from their k sampled rewards and response lengths.

    Inputs are mappings keyed by prompt id (or sequences, keyed by position).
    A sample is a success iff ``reward >= success_threshold``. The posterior is
    Beta(alpha0 + s, beta0 + k - s). Profiles come back in the input order.
    """
    alpha0, beta0 = (float(v) for v in prior)
    if not (alpha0 > 0 and beta0 > 0):
        raise ValueError(f"prior shapes must be > 0, got {prior}")
    if math.isnan(success_threshold):
        raise ValueError("success_threshold must not be NaN")
    rewards = _as_mapping(rewards_per_prompt, "rewards_per_prompt")
    lengths = _as_mapping(lengths_per_prompt, "lengths_per_prompt")
    plens = _as_mapping(prompt_lens, "prompt_lens")
    for name, other in (("lengths_per_prompt", lengths), ("prompt_lens", plens)):
        if set(other) != set(rewards):
            missing = sorted(map(repr, set(rewards) ^ set(other)))
            raise ValueError(f"{name} must cover the same prompt ids as rewards; mismatched: {missing}")

    profiles: list[PromptProfile] = []
    prompt_tokens = generated_tokens = num_samples = 0
    for pid, rs in rewards.items():
        rs = [float(r) for r in rs]
        ls = list(lengths[pid])
        if not rs:
            raise ValueError(f"prompt {pid!r}: no samples")
        if any(math.isnan(r) for r in rs):
            raise ValueError(f"prompt {pid!r}: NaN reward")
        if len(ls) != len(rs):
            raise ValueError(f"prompt {pid!r}: {len(rs)} rewards but {len(ls)} lengths")
        if any(n < 0 for n in ls) or plens[pid] < 0:
            raise ValueError(f"prompt {pid!r}: lengths must be >= 0")
        k = len(rs)
        s = sum(1 for r in rs if r >= success_threshold)
        profiles.append(
            PromptProfile(
                prompt_id=pid,
                successes=s,
                samples=k,
                mean_response_len=sum(ls) / k,
                alpha=alpha0 + s,
                beta=beta0 + k - s,
            )
        )
        prompt_tokens += int(plens[pid]) * k
        generated_tokens += int(sum(ls))
        num_samples += k
    return profiles, ProfilingCost(prompt_tokens, generated_tokens, num_samples)
