"""Sample building, rollout groups → StepSamples, against hand-computed advantages and selections."""
from dataclasses import dataclass, field

import numpy as np
import pytest

from megatron_sgpo.algo.advantage import group_advantages
from megatron_sgpo.algo.grsp import GRSPConfig
from megatron_sgpo.algo.samples import StepSamples, build_step_samples
from megatron_sgpo.algo.select import SelectionConfig

OFF = GRSPConfig(coef=0.0)


@dataclass
class Completion:
    token_ids: list
    logprobs: list = field(default_factory=list)


@dataclass
class Group:
    prompt_ids: list
    completions: list
    texts: list
    rewards: list


def group(prompt, responses, rewards, texts=None):
    return Group(prompt, [Completion(r, [-0.1] * len(r)) for r in responses], texts or ["x"] * len(responses), rewards)


# three prompts of different group sizes: one solved by some, one by all (zero variance), one by none
GROUPS = [
    group([1, 2], [[5], [6, 7], [8, 9, 10]], [1.0, 0.0, 1.0]),
    group([3], [[11], [12]], [1.0, 1.0]),
    group([4, 4, 4], [[13, 14], [15], [16], [17]], [0.0, 0.0, 0.0, 0.0]),
]


def test_samples_are_prompt_plus_response_with_group_advantages():
    s = build_step_samples(GROUPS, OFF, SelectionConfig(), np.random.default_rng(0))
    assert s.sequences[:3] == [[1, 2, 5], [1, 2, 6, 7], [1, 2, 8, 9, 10]] and s.sequences[3] == [3, 11]
    assert s.prompt_lens == [2, 2, 2, 1, 1, 3, 3, 3, 3]
    assert s.group_ids.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    rewards = [r for g in GROUPS for r in g.rewards]
    np.testing.assert_array_equal(s.advantages, group_advantages(rewards, s.group_ids))
    assert s.advantages[0] == pytest.approx((1 - 2 / 3) / (np.std([1, 0, 1]) + 1e-6))
    assert s.weights is None and s.response_tokens() == 1 + 2 + 3 + 1 + 1 + 2 + 1 + 1 + 1


def test_zero_variance_selection_keeps_only_groups_with_signal():
    s = build_step_samples(GROUPS, OFF, SelectionConfig(zero_variance=True), np.random.default_rng(0))
    assert s.group_ids.tolist() == [0, 0, 0] and s.sequences == [[1, 2, 5], [1, 2, 6, 7], [1, 2, 8, 9, 10]]


def test_nothing_left_gives_none():
    flat = [GROUPS[1], GROUPS[2]]
    assert build_step_samples(flat, OFF, SelectionConfig(zero_variance=True), np.random.default_rng(0)) is None


def test_cost_aware_draws_are_reproducible_weighted_and_only_from_what_is_left():
    sel = SelectionConfig(zero_variance=True, cost_aware=True, cost_aware_draws=5)
    a = build_step_samples(GROUPS, OFF, sel, np.random.default_rng([0, 3]))
    b = build_step_samples(GROUPS, OFF, sel, np.random.default_rng([0, 3]))
    assert len(a.sequences) == 5 and a.sequences == b.sequences
    assert set(a.group_ids.tolist()) == {0} and a.weights.mean() == pytest.approx(1.0)
    # |A| is equal within group 0 (±), so q ∝ 1/sqrt(length): the 1-token response is drawn most often
    lens = [len(x) for x in build_step_samples(GROUPS, OFF, SelectionConfig(zero_variance=True, cost_aware=True,
                                                                            cost_aware_draws=4000),
                                               np.random.default_rng(1)).sequences]
    assert lens.count(3) > lens.count(5)


def test_grsp_on_the_reward_changes_advantages_only_when_on():
    texts = ["So a. Wait b. Wait c.", "done", "So a. b."]
    g = [group([1], [[2], [3], [4]], [1.0, 1.0, 0.0], texts)]
    off = build_step_samples(g, OFF, SelectionConfig(), np.random.default_rng(0)).advantages
    on = build_step_samples(g, GRSPConfig(coef=0.5, target="reward"), SelectionConfig(),
                            np.random.default_rng(0)).advantages
    assert off[0] == off[1] and on[0] < on[1]  # the response with more segments is penalised


def test_step_samples_refuse_mismatched_fields():
    with pytest.raises(ValueError, match="one entry per sample"):
        StepSamples([[1, 2]], [1, 1], np.array([0]), np.array([0.0]))
