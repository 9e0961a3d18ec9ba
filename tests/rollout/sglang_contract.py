"""What SGLangClient needs from an SGLang server, run against `sgpo serve` (tests/rollout/test_http_server.py) and
against the real SGLang 0.5.23 (tests/engines/test_sglang_real.py), by importing these functions.

A module importing them provides the fixtures `server` (a started SGLangLauncher) and `model_dir` (the HF folder
it serves); `client` (an SGLangClient on the server) comes with them. Each test asserts one behaviour that the
issue found the client getting wrong against the real server (weight-update session, per-bucket flush, abort of
n > 1, seeds, release).
"""
import glob
import logging
import math
import threading
import time
import uuid

import pytest
import requests
import torch

from megatron_sgpo.config import RolloutSection
from megatron_sgpo.rollout.engine import EngineError, SamplingParams
from megatron_sgpo.weights.stage_tensors import buckets
from megatron_sgpo.weights.tensor_handles import serialize_named_tensors

from .helpers import teacher_forced_logprobs

PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [17]]
LONG = 1800  # new tokens of a request that is still running when the test acts on it (context 2048)


def _weights(model_dir):
    from safetensors.torch import load_file
    return load_file(glob.glob(f"{model_dir}/*.safetensors")[0])


@pytest.fixture
def client(server):
    from megatron_sgpo.rollout.sglang import SGLangClient

    c = SGLangClient(server.url, launcher=server, timeout_s=120, max_retries=1, backoff_s=0.05)
    yield c
    c.close()


def _flag(server, name) -> bool:
    """A server argument as /server_info reports it (read raw: the tests do not trust the client for it)."""
    return bool(requests.get(server.url + "/server_info", timeout=30).json().get(name))


def _in_thread(fn):
    box = {}

    def run():
        try:
            box["out"] = fn()
        except Exception as e:  # surfaced by the test's assertions
            box["err"] = e
    t = threading.Thread(target=run)
    t.start()
    return t, box


def test_per_prompt_n_and_the_log_prob_convention(client, model_dir):
    """n_i completions per prompt; log-probs are log_softmax(logits / T) over the full vocabulary."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for params in [SamplingParams(max_new_tokens=6), SamplingParams(temperature=0.7, top_k=20, top_p=0.9,
                                                                    max_new_tokens=6),
                   SamplingParams(temperature=0, max_new_tokens=6)]:
        out = client.generate(PROMPTS, [2, 0, 3, 1], params)
        assert [len(g) for g in out] == [2, 0, 3, 1]
        for i, group in enumerate(out):
            for c in group:
                ref = teacher_forced_logprobs(model, PROMPTS[i], c.token_ids, params.temperature)
                assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-4), (params, c.logprobs, ref)


def test_weight_updates_need_a_session_which_the_client_opens(server, client, model_dir):
    """Outside /begin_weight_update ... /end_weight_update the server refuses a tensor update (HTTP 400)."""
    head = _weights(model_dir)["lm_head.weight"]
    r = requests.post(server.url + "/update_weights_from_tensor", timeout=30, json={
        "serialized_named_tensors": [serialize_named_tensors([("lm_head.weight", head)])], "flush_cache": False})
    assert r.status_code == 400 and "begin_weight_update" in r.text, (r.status_code, r.text)
    v0 = client.weight_version
    client.update_weights([("lm_head.weight", torch.zeros_like(head))], version=v0 + 1)  # a direct call
    c = client.generate([PROMPTS[0]], [1], SamplingParams(max_new_tokens=3))[0][0]
    assert client.weight_version == v0 + 1 and c.weight_version == v0 + 1
    assert c.logprobs == pytest.approx([-math.log(head.shape[0])] * 3, abs=1e-5)  # a zero head: uniform
    client.update_weights([("lm_head.weight", head)], version=v0 + 2)
    c = client.generate([PROMPTS[0]], [1], SamplingParams(max_new_tokens=3))[0][0]
    assert c.weight_version == v0 + 2 and c.logprobs != pytest.approx([-math.log(head.shape[0])] * 3, abs=1e-3)


def test_a_sync_of_several_buckets_succeeds_while_a_request_runs(client, model_dir):
    """The weight sync's session: begin, one update per bucket (no per-bucket flush), end (one flush)."""
    weights = _weights(model_dir)
    t, box = _in_thread(lambda: client.generate([PROMPTS[1]], [1], SamplingParams(max_new_tokens=LONG)))
    time.sleep(1.0)
    version = client.weight_version + 1
    client.begin_weight_update(version)
    try:
        for bucket in buckets(weights.items(), bucket_bytes=20_000):
            client.update_weights(bucket, version=version)  # a per-bucket flush would fail: a request runs
    finally:
        client.abort_inflight()
        t.join(60)
        client.end_weight_update(version)
    assert client.weight_version == version


def test_abort_of_an_n_gt_1_request_by_its_own_ids(client):
    """The client's samples carry its own request ids, so aborting them stops every sample."""
    t, box = _in_thread(lambda: client.generate([[5, 6]], [4], SamplingParams(max_new_tokens=LONG)))
    deadline = time.monotonic() + 60
    while t.is_alive() and time.monotonic() < deadline:
        time.sleep(0.5)
        client.abort_inflight()  # an abort that lands before the request is registered is a no-op: repeat
    t.join(10)
    assert not t.is_alive() and "err" not in box, box
    assert all(c.finish_reason == "abort" and len(c.token_ids) < LONG for c in box["out"][0])


def test_seeds_reproduce_or_are_refused(server, client):
    """A seeded request either reproduces or, on a server that would ignore the seed, fails naming the flag."""
    params = SamplingParams(max_new_tokens=8, seed=3)
    if _flag(server, "enable_deterministic_inference"):
        a, b = client.generate(PROMPTS, [2, 0, 3, 1], params), client.generate(PROMPTS, [2, 0, 3, 1], params)
        assert [[c.token_ids for c in g] for g in a] == [[c.token_ids for c in g] for g in b]
        assert len({tuple(c.token_ids) for c in a[2]}) == 3  # the samples of one prompt are distinct streams
    else:
        with pytest.raises(EngineError, match="--enable-deterministic-inference.*rollout.seeded=false"):
            client.generate(PROMPTS, [1] * 4, params)
        unseeded = RolloutSection(seeded=False, max_new_tokens=8).sampling(seed=3)  # the way out the error names
        assert [len(g) for g in client.generate(PROMPTS, [1] * 4, unseeded)] == [1] * 4
        assert client.generate(PROMPTS, [1] * 4, SamplingParams(temperature=0, max_new_tokens=2, seed=3))


def test_release_frees_memory_only_with_the_memory_saver(server, client, caplog):
    """Without --enable-memory-saver SGLang's release frees nothing: the client skips it and says so."""
    with caplog.at_level(logging.WARNING, logger="megatron_sgpo.rollout.sglang"):
        client.release_memory()
    if _flag(server, "enable_memory_saver"):
        with pytest.raises(EngineError, match="HTTP 400.*resume_memory"):
            client.generate([PROMPTS[0]], [1], SamplingParams(max_new_tokens=2))
    else:
        assert "--enable-memory-saver" in caplog.text
    client.resume_memory()
    assert client.health() and len(client.generate([PROMPTS[0]], [1], SamplingParams(max_new_tokens=2))[0]) == 1


def test_update_weights_from_distributed_gloo(server, model_dir):
    """The broadcast-group transport, inside a session, several buckets of one version."""
    from megatron_sgpo.platform.dist import free_port
    from megatron_sgpo.rollout.sglang import SGLangClient

    weights = _weights(model_dir)
    client = SGLangClient(server.url, launcher=server, timeout_s=120, weight_sync="distributed")
    try:
        client.init_weights_update_group("127.0.0.1", free_port(), backend="gloo",
                                         group_name=f"test_group_{uuid.uuid4().hex[:8]}")  # unique per process
        version = client.weight_version + 1
        client.update_weights([("lm_head.weight", torch.zeros_like(weights["lm_head.weight"]))], version=version)
        c = client.generate([PROMPTS[1]], [1], SamplingParams(max_new_tokens=3))[0][0]
        assert client.weight_version == version
        assert c.logprobs == pytest.approx([-math.log(weights["lm_head.weight"].shape[0])] * 3, abs=1e-5)
        client.begin_weight_update(version + 1)
        for bucket in buckets(weights.items(), bucket_bytes=20_000):
            client.update_weights(bucket, version=version + 1)
        client.end_weight_update(version + 1)
        assert client.weight_version == version + 1
    finally:
        client.close()


def test_update_weights_from_disk_needs_no_session(client, model_dir):
    version = client.weight_version + 1
    client.update_weights_from_disk(model_dir, version=version)
    assert client.weight_version == version
    assert client.generate([PROMPTS[0]], [1], SamplingParams(max_new_tokens=2))[0][0].weight_version == version
