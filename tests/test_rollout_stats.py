"""Per-step rollout statistics (loop/metrics.py): what steps.jsonl and TensorBoard record about a step's groups."""
from types import SimpleNamespace

import pytest

from megatron_sgpo.loop.metrics import rollout_stats


def _group(pid, level, rewards, version=3):
    completions = [SimpleNamespace(weight_version=version) for _ in rewards]
    return SimpleNamespace(item=SimpleNamespace(id=pid, meta={"level": level}), rewards=rewards,
                           completions=completions)


def test_informative_share_pass_rates_and_version_on_hand_made_groups():
    groups = [_group("a", 1, [1.0, 1.0]), _group("b", 1, [0.0, 1.0, 1.0]), _group("c", 2, [0.0, 0.0, 0.0, 0.0]),
              _group("d", 2, [0.5, 0.0], version=2)]
    stats = rollout_stats(groups, [2, 3, 4, 2])
    assert stats["rollout/informative_groups"] == pytest.approx(2 / 4)  # b and d have unequal rewards
    assert stats["samples"] == 11 and stats["prompts"] == ["a", "b", "c", "d"]
    assert stats["accuracy"] == pytest.approx(4 / 11) and stats["reward_mean"] == pytest.approx(4.5 / 11)
    assert stats["pass_rate/level1"] == pytest.approx(4 / 5) and stats["pass_rate/level2"] == 0.0
    assert stats["rollout/weight_version"] == 2  # the oldest version the step sampled from
