"""Partial rollouts in the training loop (loop/april.py): the plan's prompts taken ahead, the first groups to complete
trained, the rest resumed under the next weights — and a recycled response's token versions reaching the loss.

The engine is the scripted client of tests/rollout/test_partial.py (prompt token 0 sets a sample's length, an abort
stops it with what it has), so which groups finish first does not depend on timing."""
import json

import numpy as np
import pytest
import torch

from megatron_sgpo.algo.grsp import GRSPConfig
from megatron_sgpo.algo.loss import LossConfig
from megatron_sgpo.algo.mismatch import MismatchConfig
from megatron_sgpo.algo.samples import build_step_samples
from megatron_sgpo.algo.select import SelectionConfig
from megatron_sgpo.batch import CostModel
from megatron_sgpo.config import ConfigError, load_config
from megatron_sgpo.loop.april import PlanRollouts
from megatron_sgpo.model.flops import ModelShape, inference_flops
from megatron_sgpo.platform.layout import ParallelLayout
from megatron_sgpo.rollout.engine import SamplingParams
from megatron_sgpo.rollout.groups import GroupRunner
from megatron_sgpo.tasks.dataset import TaskItem
from megatron_sgpo.train.update import make_loss_fn, rank_micro_batches
from tests.rollout.test_partial import ScriptedClient

SHAPE = ModelShape(hidden=64, layers=2, heads=4, kv_heads=4, ffn=128, vocab=512)
PARAMS = SamplingParams(max_new_tokens=400, seed=5)
# prompt "p<i>" needs LENGTHS[i] tokens; two long ones that the first step cannot finish
LENGTHS = [4, 20, 300, 60, 8, 350, 3, 50]


class Tokenizer:
    """'p<i>' → [its length, i]: the scripted client reads the length from the first prompt token."""

    def __call__(self, text, add_special_tokens=True):
        i = int(text[1:])
        return {"input_ids": [LENGTHS[i], i]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


class AlternatingVerifier:
    def score_batch(self, items, texts):
        return [float(i % 2) for i in range(len(texts))]  # every group has a success and a failure: all advantages != 0


@pytest.fixture
def loop():
    client = ScriptedClient()
    runner = GroupRunner(client, Tokenizer(), AlternatingVerifier(), SHAPE)
    items = {f"p{i}": TaskItem(f"p{i}", f"p{i}", "") for i in range(len(LENGTHS))}
    schedule = [[(f"p{i}", 2) for i in range(s, s + 2)] for s in range(0, len(LENGTHS), 2)]  # 4 steps of 2
    april = PlanRollouts(runner, client, schedule, per_step=2, inflight=2.0)
    yield client, april, items
    april.close()


def sizes(entries):
    return [n for _, n in entries]


def step(client, april, items, version):
    client.clear()
    client.version = version
    return april.run(items, sizes, PARAMS, version=version)


def test_groups_run_ahead_and_a_recycled_response_keeps_its_versions(loop):
    client, april, items = loop
    groups, info = step(client, april, items, 0)
    assert sorted(g.item.id for g in groups) == ["p0", "p1"] and april.taken == 4  # p2, p3 started ahead
    assert info["stale_tokens"] == 0 and info["carried"] == 2
    seen = {g.item.id for g in groups}
    for version in (1, 2, 3):
        groups, info = step(client, april, items, version)
        assert len(groups) == 2
        assert not seen & {g.item.id for g in groups}  # no plan entry trained twice
        seen |= {g.item.id for g in groups}
        for g in groups:
            for c in g.completions:
                versions = c.extra["token_versions"]
                assert len(versions) == len(c.token_ids) == LENGTHS[int(g.item.id[1:])]
                assert versions == sorted(versions) and versions[-1] <= version
        assert info["stale_tokens"] == sum(v < version for g in groups for c in g.completions
                                           for v in c.extra["token_versions"])
    assert "p2" in seen  # the long group started at step 0 was resumed and trained
    assert april.taken == len(LENGTHS)


def test_every_request_is_booked_with_its_context_and_tokens(loop):
    client, april, items = loop
    booked = []
    for version in range(4):
        _, info = step(client, april, items, version)
        booked += info["requests"]
    made_total = sum(made for _, made in booked)
    carried = sum(len(s.token_ids) for g in april.rollouts.carried.values() for s in g.samples)
    assert made_total == april.rollouts.generated_tokens
    trained_and_carried = carried + sum(
        LENGTHS[i] * 2 for i in range(len(LENGTHS)) if f"p{i}" not in
        {april.queue[k][0] for k in april.rollouts.carried})
    assert made_total == trained_and_carried  # every generated token booked exactly once
    for context, made in booked:  # a resumed request re-reads its prompt (2 tokens) and the tokens made so far
        assert context >= 2
    assert any(context > 2 for context, _ in booked)
    tokens, flops = april.runner.request_cost(booked)
    assert tokens == sum(c + m for c, m in booked)
    assert flops == sum(inference_flops(SHAPE, c, m) for c, m in booked)


def test_state_round_trip_resumes_the_carried_groups(loop):
    client, april, items = loop
    step(client, april, items, 0)
    state = april.state_dict()
    again = PlanRollouts(april.runner, client, [[(q, n)] for q, n in april.queue], per_step=2, inflight=2.0)
    try:
        again.load_state_dict(json.loads(json.dumps(state)))  # as the checkpoint's state.json holds it
        assert again.taken == april.taken and sorted(again.rollouts.carried) == sorted(april.rollouts.carried)
        a, _ = step(client, april, items, 1)
        b, _ = step(client, again, items, 1)
        assert [(g.item.id, [c.token_ids for c in g.completions]) for g in a] == \
               [(g.item.id, [c.token_ids for c in g.completions]) for g in b]
    finally:
        again.close()


def test_a_recycled_responses_old_tokens_are_masked_in_the_loss(loop):
    """max_staleness=0: exactly the tokens an older version made get no gradient; the others do."""
    client, april, items = loop
    step(client, april, items, 0)
    groups, info = step(client, april, items, 1)
    assert info["stale_tokens"] > 0
    samples = build_step_samples(groups, GRSPConfig(coef=0.0), SelectionConfig(), np.random.default_rng(0))
    [mb] = rank_micro_batches(samples, ParallelLayout(dp=1), 0, 100000, CostModel(1.0, 0.0), policy_version=1)
    engine = mb.fields["engine_logprobs"]
    mb.fields["old_logprobs"] = engine.clone()
    logp = engine.clone().requires_grad_(True)
    loss_fn = make_loss_fn(LossConfig(), float(mb.loss_mask.sum()), MismatchConfig(max_staleness=0))
    loss, metrics = loss_fn(logp, None, mb)
    loss.backward()
    stale = mb.fields["staleness"] > 0
    assert int(stale.sum()) == info["stale_tokens"] == int(metrics["stale_tokens"])
    assert int(metrics["stale_masked_tokens"]) == info["stale_tokens"]
    assert torch.all(mb.fields["advantages"] != 0)
    assert torch.all(logp.grad[stale] == 0)
    assert torch.all(logp.grad[~stale & (mb.loss_mask > 0)] != 0)
    # without the bound the same old tokens are trained (their engine log-probs are the behaviour policy)
    logp.grad = None
    loss, metrics = make_loss_fn(LossConfig(), float(mb.loss_mask.sum()), MismatchConfig())(logp, None, mb)
    loss.backward()
    assert int(metrics["stale_tokens"]) == info["stale_tokens"] and int(metrics["stale_masked_tokens"]) == 0
    assert torch.all(logp.grad[stale] != 0)


@pytest.mark.parametrize("override, key", [
    (["rollout.partial=true"], "rollout.partial"),  # engine local
    (["rollout.partial=true", "rollout.engine=serve", "rollout.url=http://x:1", "run.mode=dapo",
      "selection.refill=true"], "rollout.partial"),
    (["mismatch.max_staleness=1"], "mismatch.max_staleness"),
])
def test_settings_partial_rollouts_cannot_carry_are_refused(override, key):
    with pytest.raises(ConfigError, match=f"config key {key}"):
        load_config(None, override)

