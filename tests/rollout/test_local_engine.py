"""LocalEngine: group sizes, agreement with transformers, log-prob exactness, stops, seeds, weights."""
import math
import threading
import time

import pytest
import torch

from megatron_sgpo.rollout.engine import EngineError, SamplingParams
from megatron_sgpo.rollout.local import LocalEngine

from .helpers import teacher_forced_logprobs

PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16], [17]]

pytestmark = pytest.mark.timeout(60)


def test_per_prompt_n_is_respected(local_engine):
    out = local_engine.generate(PROMPTS, [3, 0, 5, 1], SamplingParams(max_new_tokens=5, seed=0))
    assert [len(g) for g in out] == [3, 0, 5, 1]
    assert all(c.prompt_index == i for i, g in enumerate(out) for c in g)
    assert all(len(c.token_ids) == len(c.logprobs) == 5 and c.finish_reason == "length" for g in out for c in g)
    assert len({tuple(c.token_ids) for c in out[2]}) > 1  # samples of one group are not copies


def test_greedy_matches_transformers_generate(local_engine):
    out = local_engine.generate(PROMPTS, [1] * len(PROMPTS), SamplingParams(temperature=0, max_new_tokens=12))
    L = max(map(len, PROMPTS))
    ids = torch.tensor([[0] * (L - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in PROMPTS])
    ref = local_engine.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                                      pad_token_id=0)[:, L:]
    assert [g[0].token_ids for g in out] == ref.tolist()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, -1, 1.0), (0.7, 20, 0.9), (0.0, -1, 1.0)])
def test_logprobs_equal_teacher_forced_forward(local_engine, temperature, top_k, top_p):
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=10, seed=1)
    out = local_engine.generate(PROMPTS, [2, 1, 2, 1], params)
    for i, group in enumerate(out):
        for c in group:
            ref = teacher_forced_logprobs(local_engine.model, PROMPTS[i], c.token_ids, temperature)
            assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-4), (i, c.logprobs, ref.tolist())


def test_top_k_restricts_the_support(local_engine):
    out = local_engine.generate([PROMPTS[0]], [16], SamplingParams(top_k=1, max_new_tokens=6, seed=2))
    greedy = local_engine.generate([PROMPTS[0]], [1], SamplingParams(temperature=0, max_new_tokens=6))
    assert all(c.token_ids == greedy[0][0].token_ids for c in out[0])


def test_stop_token_ids_finish_with_stop(local_engine):
    greedy = local_engine.generate([PROMPTS[0]], [1], SamplingParams(temperature=0, max_new_tokens=10))[0][0]
    stop_tok = greedy.token_ids[3]
    first = greedy.token_ids.index(stop_tok)
    c = local_engine.generate([PROMPTS[0]], [1], SamplingParams(temperature=0, max_new_tokens=10,
                                                                stop_token_ids=[stop_tok]))[0][0]
    assert c.finish_reason == "stop" and c.extra["matched"] == stop_tok
    assert c.token_ids == greedy.token_ids[: first + 1]  # the stop token itself is kept, as SGLang does


def test_stop_string_finishes_and_is_trimmed_from_text(local_engine):
    greedy = local_engine.generate([PROMPTS[1]], [1], SamplingParams(temperature=0, max_new_tokens=10))[0][0]
    stop = local_engine.tokenizer.decode([greedy.token_ids[4]])
    c = local_engine.generate([PROMPTS[1]], [1], SamplingParams(temperature=0, max_new_tokens=10, stop=[stop]))[0][0]
    k = len(c.token_ids)
    assert c.finish_reason == "stop" and c.extra["matched"] == stop
    assert c.token_ids == greedy.token_ids[:k] and k <= 5
    assert stop in local_engine.tokenizer.decode(c.token_ids)
    assert stop not in local_engine.tokenizer.decode(c.token_ids[:-1])
    assert stop not in c.text and local_engine.tokenizer.decode(c.token_ids).startswith(c.text)


def test_max_new_tokens_finishes_with_length(local_engine):
    c = local_engine.generate([PROMPTS[2]], [1], SamplingParams(max_new_tokens=7, seed=3))[0][0]
    assert c.finish_reason == "length" and len(c.token_ids) == 7


def test_seed_reproduces_and_differs(local_engine):
    p = SamplingParams(max_new_tokens=8, seed=42)
    a = local_engine.generate(PROMPTS, [2, 2, 2, 2], p)
    b = local_engine.generate(PROMPTS, [2, 2, 2, 2], p)
    c = local_engine.generate(PROMPTS, [2, 2, 2, 2], SamplingParams(max_new_tokens=8, seed=43))
    toks = lambda out: [x.token_ids for g in out for x in g]
    assert toks(a) == toks(b)
    assert toks(a) != toks(c)


def test_abort_stops_generation(local_engine):
    box = {}
    t = threading.Thread(target=lambda: box.update(out=local_engine.generate(
        [PROMPTS[0]], [4], SamplingParams(max_new_tokens=1500, seed=0))))
    t.start()
    deadline = time.monotonic() + 30
    while t.is_alive() and time.monotonic() < deadline:  # an abort before generate starts is a no-op
        time.sleep(0.3)
        local_engine.abort()
    t.join(5)
    assert not t.is_alive()
    assert all(c.finish_reason == "abort" and len(c.token_ids) < 1500 for c in box["out"][0])


@pytest.fixture
def fresh_engine(tiny_model_dir):
    return LocalEngine(tiny_model_dir, device="cpu")


def test_update_weights_changes_logprobs_and_version(fresh_engine):
    lm = fresh_engine.model.lm_head.weight
    fresh_engine.update_weights([("lm_head.weight", torch.zeros_like(lm))], version=3)
    assert fresh_engine.weight_version == 3
    c = fresh_engine.generate([PROMPTS[0]], [1], SamplingParams(max_new_tokens=4, seed=0))[0][0]
    assert c.weight_version == 3
    assert c.logprobs == pytest.approx([-math.log(256)] * 4, abs=1e-5)


def test_update_weights_is_strict_and_atomic(fresh_engine):
    before = fresh_engine.model.lm_head.weight.clone()
    with pytest.raises(EngineError, match="model.layers.9.mlp.up_proj.weight"):
        fresh_engine.update_weights([("lm_head.weight", torch.zeros_like(before)),
                                     ("model.layers.9.mlp.up_proj.weight", torch.zeros(1))], version=1)
    with pytest.raises(EngineError, match=r"model.norm.weight.*\(3,\).*\(64,\)"):
        fresh_engine.update_weights([("model.norm.weight", torch.zeros(3))], version=1)
    assert torch.equal(fresh_engine.model.lm_head.weight, before)  # nothing was written
    assert fresh_engine.weight_version == 0


def test_release_then_resume(fresh_engine):
    fresh_engine.release_memory()
    assert not fresh_engine.health()
    with pytest.raises(EngineError, match="resume_memory"):
        fresh_engine.generate([PROMPTS[0]], [1], SamplingParams(max_new_tokens=2))
    fresh_engine.resume_memory()
    assert fresh_engine.health()
    assert len(fresh_engine.generate([PROMPTS[0]], [1], SamplingParams(max_new_tokens=2))[0]) == 1


def test_argument_errors(local_engine):
    with pytest.raises(ValueError, match="n_per_prompt"):
        local_engine.generate(PROMPTS, [1], SamplingParams())
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(EngineError, match="context length 2048"):
        local_engine.generate([PROMPTS[0]], [1], SamplingParams(max_new_tokens=2046))


def test_split_copies_covers_every_row_once_in_balanced_groups():
    from megatron_sgpo.rollout.local import split_copies

    pairs = [(torch.zeros(100, 4), torch.randn(100, 4)), (torch.zeros(3), torch.randn(3)),
             (torch.zeros(10, 4), torch.randn(10, 4)), (torch.zeros(()), torch.randn(()))]
    groups = split_copies(pairs, 2)
    sizes = [sum(s.numel() for _, s in g) for g in groups]
    assert len(groups) == 2 and sum(sizes) == 400 + 3 + 40 + 1 and max(sizes) - min(sizes) <= 40
    for group in groups:
        for dst, src in group:
            dst.copy_(src)
    assert all(torch.equal(d, s) for d, s in pairs)  # the blocks were views of the whole tensors


def test_an_update_loaded_on_two_threads_equals_the_weights_sent(tiny_model_dir):
    engine = LocalEngine(tiny_model_dir, device="cpu", load_threads=2)
    try:
        named = [(n, torch.randn_like(p)) for n, p in engine.model.named_parameters()]
        engine.update_weights(named, version=3)
        params = dict(engine.model.named_parameters())
        assert engine.load_threads == 2 and engine.weight_version == 3
        assert all(torch.equal(params[n], t) for n, t in named)
    finally:
        engine.close()
