"""Sample building: a step's rollout groups → advantages → GRSP → selection → :class:`StepSamples`.

The one place where the algorithm turns rewards into what the optimiser sees. Pure: groups in
(anything with ``prompt_ids``, ``completions`` holding ``token_ids`` and ``logprobs``, ``texts``
and ``rewards``, as :class:`megatron_sgpo.rollout.groups.Group` has), samples out; randomness only
from the generator the caller passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from megatron_sgpo.algo import advantage, grsp, select


@dataclass
class StepSamples:
    """The samples of one step, identical on every rank."""

    sequences: list[list[int]]  # prompt + response token ids
    prompt_lens: list[int]
    group_ids: np.ndarray
    advantages: np.ndarray  # per sample, already normalised within its group
    weights: np.ndarray | None = None  # importance weights (cost-aware selection), default 1

    def __post_init__(self):
        n = len(self.sequences)
        if not (len(self.prompt_lens) == len(self.group_ids) == len(self.advantages) == n):
            raise ValueError("StepSamples fields must all have one entry per sample")
        if n == 0:
            raise ValueError("a step needs at least one sample")

    def response_tokens(self) -> int:
        return int(sum(len(s) - p for s, p in zip(self.sequences, self.prompt_lens)))


def group_advantages(groups: Sequence, rewards: np.ndarray, group_ids: np.ndarray,
                     cfg: grsp.GRSPConfig) -> np.ndarray:
    """Per-group advantages, with the GRSP segment-length penalty on the reward or the advantage (coef 0: off)."""
    if cfg.coef == 0:
        return advantage.group_advantages(rewards, group_ids)

    def penalised(values: np.ndarray) -> np.ndarray:
        out = values.astype(np.float64).copy()
        for i, group in enumerate(groups):
            lps = [c.logprobs for c in group.completions]
            out[group_ids == i] = grsp.apply_grsp(out[group_ids == i], group.texts, cfg, lps)
        return out

    if cfg.target == "reward":
        return advantage.group_advantages(penalised(rewards), group_ids)
    return penalised(advantage.group_advantages(rewards, group_ids))


def build_step_samples(groups: Sequence, grsp_cfg: grsp.GRSPConfig, selection: select.SelectionConfig,
                       rng: np.random.Generator) -> StepSamples | None:
    """The samples the optimiser trains on this step, or None when the selection kept none."""
    seqs, plens, gids, rewards = [], [], [], []
    for g, group in enumerate(groups):
        for completion, reward in zip(group.completions, group.rewards):
            seqs.append(group.prompt_ids + list(completion.token_ids))
            plens.append(len(group.prompt_ids))
            gids.append(g)
            rewards.append(reward)
    rewards_a, gids_a = np.array(rewards), np.array(gids)
    adv = group_advantages(groups, rewards_a, gids_a, grsp_cfg)
    keep, weights = np.arange(len(seqs)), None
    if selection.zero_variance:
        keep = np.flatnonzero(select.zero_variance_filter(rewards_a, gids_a).keep)
    if selection.cost_aware and len(keep):  # q ∝ |A|/sqrt(len) over what is left
        costs = select.sequence_costs(plens, [len(s) - p for s, p in zip(seqs, plens)])
        pick = select.cost_aware_sample(adv[keep], costs[keep], selection.cost_aware_draws or len(keep), rng,
                                        selection.cost_aware_mix)
        keep, weights = keep[pick.indices], pick.weights
    if len(keep) == 0:
        return None
    return StepSamples([seqs[i] for i in keep], [plens[i] for i in keep], gids_a[keep], adv[keep], weights)
