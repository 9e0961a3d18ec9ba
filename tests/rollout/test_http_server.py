"""SGLangClient ↔ `sgpo serve` (a real subprocess) over HTTP on 127.0.0.1."""
import math
import threading
import time

import pytest
import requests
import torch

from megatron_sgpo.rollout.engine import EngineError, SamplingParams
from megatron_sgpo.rollout.sglang import SGLangClient
from megatron_sgpo.weights.sync import buckets

from .helpers import build_tiny_model, free_port

pytestmark = pytest.mark.timeout(180)
PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [17]]


@pytest.fixture(scope="module")
def server(servers):
    return servers["main"]


@pytest.fixture
def client(server):
    c = SGLangClient(server.url, launcher=server, timeout_s=60, max_retries=1, backoff_s=0.05)
    yield c
    c.close()


@pytest.fixture(scope="module")
def originals(tiny_model_dir):
    import glob

    from safetensors.torch import load_file
    return load_file(glob.glob(f"{tiny_model_dir}/*.safetensors")[0])


def test_generate_with_per_prompt_n_matches_local_engine(client, local_engine):
    out = client.generate(PROMPTS, [2, 0, 3, 1], SamplingParams(max_new_tokens=5, seed=7))
    assert [len(g) for g in out] == [2, 0, 3, 1]
    assert len({tuple(c.token_ids) for c in out[2]}) == 3  # seeded samples are distinct streams
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
    before = client.attempts
    with pytest.raises(EngineError, match="HTTP 400.*no.such.weight"):
        client.update_weights([("no.such.weight", torch.zeros(2))], version=1)
    assert client.attempts == before + 1  # 4xx is not retried


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
    body = {"input_ids": [5, 6], "rid": "long-1", "sampling_params": {"max_new_tokens": 1500, "n": 4}}
    t = threading.Thread(target=lambda: box.update(r=requests.post(server.url + "/generate", json=body, timeout=60)))
    t.start()
    keep_aborting(t, lambda: requests.post(server.url + "/abort_request", json={"rid": "long-1"},
                                           timeout=10).raise_for_status())
    out = box["r"].json()
    assert all(o["meta_info"]["finish_reason"]["type"] == "abort" and len(o["output_ids"]) < 1500 for o in out)

    t = threading.Thread(target=lambda: box.update(
        c=client.generate([[5, 6]], [4], SamplingParams(max_new_tokens=1500))))
    t.start()
    keep_aborting(t, client.abort)
    assert all(c.finish_reason == "abort" and len(c.token_ids) < 1500 for c in box["c"][0])


def test_update_weights_from_tensor_changes_outputs_and_version(client, originals):
    v0 = client.weight_version
    client.update_weights([("lm_head.weight", torch.zeros_like(originals["lm_head.weight"]))], version=v0 + 1)
    assert client.weight_version == v0 + 1
    c = client.generate([PROMPTS[0]], [1], SamplingParams(max_new_tokens=3, seed=0))[0][0]
    assert c.weight_version == v0 + 1 and c.logprobs == pytest.approx([-math.log(256)] * 3, abs=1e-5)
    client.update_weights(originals.items(), version=v0 + 2)
    c = client.generate([PROMPTS[0]], [1], SamplingParams(max_new_tokens=3, seed=0))[0][0]
    assert c.logprobs != pytest.approx([-math.log(256)] * 3, abs=1e-3)


def test_update_weights_from_distributed_gloo(server, originals):
    client = SGLangClient(server.url, launcher=server, timeout_s=60, weight_sync="distributed")
    try:
        client.init_weights_update_group("127.0.0.1", free_port(), world_size=2, backend="gloo",
                                         group_name="test_group")
        client.update_weights([("lm_head.weight", torch.zeros_like(originals["lm_head.weight"])),
                               ("model.norm.weight", originals["model.norm.weight"])], version=11)
        c = client.generate([PROMPTS[1]], [1], SamplingParams(max_new_tokens=3))[0][0]
        assert client.weight_version == 11 and c.logprobs == pytest.approx([-math.log(256)] * 3, abs=1e-5)
        for bucket in buckets(originals.items(), bucket_bytes=20_000):  # several buckets, as the weight sync sends
            client.update_weights(bucket, version=12)
        assert client.weight_version == 12
    finally:
        client.close()


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


def test_release_and_resume_memory(client):
    client.release_memory()
    with pytest.raises(EngineError, match="HTTP 400.*resume_memory"):
        client.generate([PROMPTS[0]], [1], SamplingParams(max_new_tokens=2))
    client.resume_memory()
    assert client.health()
    assert len(client.generate([PROMPTS[0]], [1], SamplingParams(max_new_tokens=2))[0]) == 1
