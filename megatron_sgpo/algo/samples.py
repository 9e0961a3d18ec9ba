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
    engine_logprobs: list[list[float]] | None = None  # per sample, the engine's log-prob of each response token
    rewards: np.ndarray | None = None  # per sample, the rewards the advantages were computed from (GRSP-shaped)
    token_versions: list[list[int]] | None = None  # per sample, the weight version that made each response token

    def __post_init__(self):
        n = len(self.sequences)
        if not (len(self.prompt_lens) == len(self.group_ids) == len(self.advantages) == n):
            raise ValueError("StepSamples fields must all have one entry per sample")
        if n == 0:
            raise ValueError("a step needs at least one sample")
        for name in ("engine_logprobs", "token_versions"):
            per_token = getattr(self, name)
            for i, (seq, p, values) in enumerate(zip(self.sequences, self.prompt_lens, per_token or ())):
                if len(values) != len(seq) - p:
                    raise ValueError(f"sample {i}: {len(values)} {name} for {len(seq) - p} response tokens")

    def to_dict(self) -> dict:
        """JSON-able (for a checkpoint of rollouts made ahead of training)."""
        arrays = lambda v: None if v is None else np.asarray(v).tolist()  # noqa: E731
        return {"sequences": self.sequences, "prompt_lens": self.prompt_lens, "group_ids": arrays(self.group_ids),
                "advantages": arrays(self.advantages), "weights": arrays(self.weights),
                "engine_logprobs": self.engine_logprobs, "rewards": arrays(self.rewards),
                "token_versions": self.token_versions}

    @classmethod
    def from_dict(cls, d: dict) -> "StepSamples":
        array = lambda v: None if v is None else np.asarray(v)  # noqa: E731
        return cls(d["sequences"], d["prompt_lens"], np.asarray(d["group_ids"]), np.asarray(d["advantages"]),
                   array(d["weights"]), d["engine_logprobs"], array(d["rewards"]), d["token_versions"])

    def response_tokens(self) -> int:
        return int(sum(len(s) - p for s, p in zip(self.sequences, self.prompt_lens)))

    def subset(self, index: np.ndarray) -> "StepSamples":
        """The samples at ``index`` (a PPO mini-batch), in that order."""
        pick = lambda values: [values[i] for i in index]  # noqa: E731
        return StepSamples(pick(self.sequences), pick(self.prompt_lens), np.asarray(self.group_ids)[index],
                           np.asarray(self.advantages)[index],
                           None if self.weights is None else np.asarray(self.weights)[index],
                           None if self.engine_logprobs is None else pick(self.engine_logprobs),
                           None if self.rewards is None else np.asarray(self.rewards)[index],
                           None if self.token_versions is None else pick(self.token_versions))


def shaped_advantages(groups: Sequence, rewards: np.ndarray, group_ids: np.ndarray,
                      cfg: grsp.GRSPConfig) -> tuple[np.ndarray, np.ndarray]:
    """(per-group advantages, the rewards they came from), with the GRSP segment-length penalty on the reward or
    on the advantage (coef 0: off)."""
    if cfg.coef == 0:
        return advantage.group_advantages(rewards, group_ids), rewards

    def penalised(values: np.ndarray) -> np.ndarray:
        out = values.astype(np.float64).copy()
        for i, group in enumerate(groups):
            lps = [c.logprobs for c in group.completions]
            out[group_ids == i] = grsp.apply_grsp(out[group_ids == i], group.texts, cfg, lps)
        return out

    if cfg.target == "reward":
        shaped = penalised(rewards)
        return advantage.group_advantages(shaped, group_ids), shaped
    return penalised(advantage.group_advantages(rewards, group_ids)), rewards


def token_versions(completion) -> list[int] | None:
    """The weight version of each response token: the per-token tags of a resumed (partial) rollout, else the one
    version the engine reported, else None."""
    tagged = (getattr(completion, "extra", None) or {}).get("token_versions")
    if tagged is not None:
        return list(tagged)
    version = getattr(completion, "weight_version", None)
    return None if version is None else [version] * len(completion.token_ids)


def build_step_samples(groups: Sequence, grsp_cfg: grsp.GRSPConfig, selection: select.SelectionConfig,
                       rng: np.random.Generator) -> StepSamples | None:
    """The samples the optimiser trains on this step, or None when the selection kept none."""
    seqs, plens, gids, rewards, engine_lps, versions = [], [], [], [], [], []
    for g, group in enumerate(groups):
        for completion, reward in zip(group.completions, group.rewards):
            seqs.append(group.prompt_ids + list(completion.token_ids))
            plens.append(len(group.prompt_ids))
            gids.append(g)
            rewards.append(reward)
            engine_lps.append(list(completion.logprobs))
            versions.append(token_versions(completion))
    rewards_a, gids_a = np.array(rewards), np.array(gids)
    adv, shaped = shaped_advantages(groups, rewards_a, gids_a, grsp_cfg)
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
    known = all(v is not None for v in versions)
    return StepSamples([seqs[i] for i in keep], [plens[i] for i in keep], gids_a[keep], adv[keep], weights,
                       [engine_lps[i] for i in keep], shaped[keep], [versions[i] for i in keep] if known else None)
