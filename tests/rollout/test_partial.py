"""APRIL partial rollouts: the first `target` complete groups come back, the rest are aborted and carried, and a
resumed sample's tokens carry the weight versions that produced them; every generated token is counted once.

The engine here is a scripted SGLang-like client: prompt token 0 sets how many tokens a sample needs, each token
takes 2 ms, and an abort by rid stops a request with what it has — the behaviour of SGLang's continuous batching
that the scheduler relies on, made deterministic so that the test does not depend on timing."""
import threading
import time

import pytest

from megatron_sgpo.rollout.engine import Completion, SamplingParams
from megatron_sgpo.rollout.partial import PartialRollouts


class ScriptedClient:
    def __init__(self):
        self.version, self.seeds, self.calls = 0, [], []
        self._abort = threading.Event()
        self._lock = threading.Lock()

    def generate_group(self, prompt, n, params, index):
        with self._lock:
            self.calls.append(len(prompt))
            self.seeds.append(params.seed)
        need, have = prompt[0], len(prompt) - 2  # prompts are [length, marker], then tokens so far
        version, tokens = self.version, []
        while len(tokens) < min(need - have, params.max_new_tokens):
            if self._abort.is_set():
                return [Completion(index, tokens, [-0.5] * len(tokens), "abort", weight_version=version)]
            time.sleep(0.002)
            tokens.append(7)
        reason = "stop" if have + len(tokens) >= need else "length"
        return [Completion(index, tokens, [-0.5] * len(tokens), reason, weight_version=version)]

    def abort_inflight(self):
        self._abort.set()
        return 0

    def clear(self):
        self._abort.clear()


@pytest.fixture
def april():
    client = ScriptedClient()
    rollouts = PartialRollouts(client)
    yield client, rollouts
    rollouts.close()


PARAMS = SamplingParams(max_new_tokens=400, seed=11)


def test_short_groups_return_long_ones_are_carried_and_resumed_under_new_weights(april):
    client, rollouts = april
    groups = [("short-a", [5, 1], 2), ("short-b", [8, 2], 2), ("long-a", [300, 3], 2), ("long-b", [350, 4], 1)]
    first = rollouts.run(groups, target=2, params=PARAMS)
    assert sorted(first) == ["short-a", "short-b"]
    assert [len(c.token_ids) for c in first["short-a"]] == [5, 5]
    assert all(c.extra["token_versions"] == [0] * len(c.token_ids) for g in first.values() for c in g)
    assert sorted(rollouts.carried) == ["long-a", "long-b"]
    partial = [len(s.token_ids) for g in rollouts.carried.values() for s in g.samples]
    assert all(0 < k < 300 for k in partial)  # aborted mid-way, and kept

    client.clear()
    client.version = 1  # the trainer stepped and synced
    second = rollouts.run([], target=2, params=PARAMS)
    assert sorted(second) == ["long-a", "long-b"] and not rollouts.carried
    for key, need in (("long-a", 300), ("long-b", 350)):
        for c in second[key]:
            assert len(c.token_ids) == need and c.finish_reason == "stop" and c.weight_version == 1
            versions = c.extra["token_versions"]
            k = versions.index(1)  # the tokens before the abort came from version 0, the rest from version 1
            assert 0 < k < need and versions == [0] * k + [1] * (need - k)
            assert c.extra["prompt_ids"] == dict((g[0], g[1]) for g in groups)[key]  # the prompt it started with


def test_every_generated_token_is_counted_once(april):
    client, rollouts = april
    groups = [(f"g{i}", [n, i], 2) for i, n in enumerate([4, 6, 200, 250, 9])]
    out = rollouts.run(groups, target=3, params=PARAMS)
    kept = sum(len(c.token_ids) for g in out.values() for c in g)
    carried = sum(len(s.token_ids) for g in rollouts.carried.values() for s in g.samples)
    assert rollouts.generated_tokens == kept + carried
    client.clear()
    out2 = rollouts.run([], target=2, params=PARAMS)
    assert rollouts.generated_tokens == kept + sum(len(c.token_ids) for g in out2.values() for c in g)


def test_each_sample_and_segment_gets_its_own_seed(april):
    client, rollouts = april
    rollouts.run([("a", [3, 0], 4), ("b", [3, 1], 4)], target=2, params=PARAMS)
    assert len(set(client.seeds)) == 8


def test_bad_targets_and_duplicate_groups_are_refused(april):
    client, rollouts = april
    with pytest.raises(ValueError, match="target must be >= 1"):
        rollouts.run([("a", [3, 0], 1)], target=0, params=PARAMS)
    with pytest.raises(ValueError, match="fewer than the target 2"):
        rollouts.run([("a", [3, 0], 1)], target=2, params=PARAMS)
    rollouts.run([("a", [3, 0], 1), ("b", [300, 0], 1)], target=1, params=PARAMS)
    client.clear()
    with pytest.raises(ValueError, match="'b' is already in flight"):
        rollouts.run([("b", [3, 0], 1)], target=1, params=PARAMS)
