"""SGLangClient ↔ `sgpo serve` (a real subprocess) over HTTP on 127.0.0.1: the SGLang contract tests (run against
the real SGLang by tests/engines), on a server with SGLang's memory-saver and deterministic flags and on one
without, and what only `sgpo serve` is checked for."""
import threading
import time

import pytest
import requests
import torch

from megatron_sgpo.rollout.engine import EngineError, SamplingParams

from .helpers import build_tiny_model
from .sglang_contract import *  # noqa: F401,F403  (the shared contract tests, collected here)

pytestmark = pytest.mark.timeout(180)
PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [17]]


@pytest.fixture(scope="module", params=["main", "plain"])
def server(servers, request):
    return servers[request.param]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


def test_generate_with_per_prompt_n_matches_local_engine(client, local_engine):
    out = client.generate(PROMPTS, [2, 0, 3, 1], SamplingParams(max_new_tokens=5))
    assert [len(g) for g in out] == [2, 0, 3, 1]
    assert len({tuple(c.token_ids) for c in out[2]}) == 3  # samples are distinct streams
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    remote = client.generate(PROMPTS, [1] * 4, greedy)
    local = local_engine.generate(PROMPTS, [1] * 4, greedy)
    for r, l in zip(remote, local):
        assert r[0].token_ids == l[0].token_ids
        assert r[0].logprobs == pytest.approx(l[0].logprobs, abs=1e-4)


def test_raw_generate_has_sglang_shapes(server):
    one = requests.post(server.url + "/generate", json={
        "input_ids": [5, 6], "rid": "abc", "return_logprob": True,
        "sampling_params": {"max_new_tokens": 3, "temperature": 0}}, timeout=30).json()
    meta = one["meta_info"]
    assert meta["id"] == "abc" and meta["finish_reason"] == {"type": "length", "length": 3}
    assert meta["prompt_tokens"] == 2 and meta["completion_tokens"] == 3 and one["output_ids"]
    assert [t for _, t, _ in meta["output_token_logprobs"]] == one["output_ids"]
    assert isinstance(one["text"], str) and isinstance(meta["weight_version"], str)
    many = requests.post(server.url + "/generate", json={
        "input_ids": [[5, 6], [7]], "sampling_params": {"max_new_tokens": 2, "n": 2}}, timeout=30).json()
    assert isinstance(many, list) and len(many) == 4 and "output_token_logprobs" not in many[0]["meta_info"]


def test_bad_requests_get_clear_400s(server, client):
    r = requests.post(server.url + "/generate", data=b"{not json", timeout=10)
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    r = requests.post(server.url + "/generate", json={"input_ids": [1], "sampling_params": {"beam_width": 2}},
                      timeout=10)
    assert r.status_code == 400 and "beam_width" in r.json()["error"]["message"]
    assert requests.get(server.url + "/nope", timeout=10).status_code == 404
    r = requests.post(server.url + "/abort_request", json=[1], timeout=10)
    assert r.status_code == 400 and "must be an object" in r.json()["error"]["message"]
    client.begin_weight_update(1)
    before = client.attempts
    with pytest.raises(EngineError, match="HTTP 400.*no.such.weight"):
        client.update_weights_from_tensor([("no.such.weight", torch.zeros(2))], version=1)
    assert client.attempts == before + 1  # 4xx is not retried
    client.end_weight_update(1)


def keep_aborting(thread, abort, period_s=0.5, limit_s=30):
    """An abort that lands before the request is registered is a no-op, so repeat it until done."""
    deadline = time.monotonic() + limit_s
    while thread.is_alive() and time.monotonic() < deadline:
        time.sleep(period_s)
        abort()
    thread.join(5)
    assert not thread.is_alive()


def test_abort_by_rid_and_abort_all(server, client):
    box = {}
    # as SGLang: the samples of an n > 1 request get fresh ids, so aborting the caller's id misses them
    body = {"input_ids": [5, 6], "rid": "long-1", "sampling_params": {"max_new_tokens": 300, "n": 4}}
    t = threading.Thread(target=lambda: box.update(r=requests.post(server.url + "/generate", json=body, timeout=60)))
    t.start()
    time.sleep(0.3)
    requests.post(server.url + "/abort_request", json={"rid": "long-1"}, timeout=10).raise_for_status()
    t.join(60)
    assert [o["meta_info"]["finish_reason"]["type"] for o in box["r"].json()] == ["length"] * 4

    # the client sends n copies under ids of its own, so aborting its in-flight ids stops every sample
    t = threading.Thread(target=lambda: box.update(
        c=client.generate([[5, 6]], [4], SamplingParams(max_new_tokens=1500))))
    t.start()
    keep_aborting(t, client.abort_inflight)
    assert all(c.finish_reason == "abort" and len(c.token_ids) < 1500 for c in box["c"][0])

    t = threading.Thread(target=lambda: box.update(
        c=client.generate([[5, 6]], [4], SamplingParams(max_new_tokens=1500))))
    t.start()
    keep_aborting(t, client.abort)
    assert all(c.finish_reason == "abort" and len(c.token_ids) < 1500 for c in box["c"][0])


def test_update_weights_from_disk(client, tmp_path, tiny_model_dir):
    from megatron_sgpo.rollout.local import LocalEngine

    other = build_tiny_model(str(tmp_path / "other"), seed=1)
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    client.update_weights_from_disk(other, version=21)
    assert client.weight_version == 21
    remote = client.generate(PROMPTS, [1] * 4, greedy)
    local = LocalEngine(other, device="cpu").generate(PROMPTS, [1] * 4, greedy)
    assert [g[0].token_ids for g in remote] == [g[0].token_ids for g in local]
    client.update_weights_from_disk(tiny_model_dir, version=22)
    with pytest.raises(EngineError, match="no \\*.safetensors"):
        client.update_weights_from_disk(str(tmp_path), version=23)


def test_small_requests_do_not_wait_for_a_delayed_ack(client):
    """With Nagle on, every reply's body waited ~40 ms for the client's delayed ACK of its headers; `sgpo serve`
    sets TCP_NODELAY (benchmarks/request_latency.py measures both)."""
    client.request("GET", "/get_model_info")
    times = []
    for _ in range(10):
        start = time.perf_counter()
        client.request("GET", "/get_model_info")
        times.append(time.perf_counter() - start)
    assert sorted(times)[5] < 0.02, times
