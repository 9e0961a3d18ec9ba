"""EngineFleet over two real `sgpo serve` processes: work split, order, weights, and engines dying mid-call."""
import logging
import threading
import time

import pytest
import torch

from megatron_sgpo.rollout.engine import EngineError, SamplingParams
from megatron_sgpo.rollout.fleet import EngineFleet
from megatron_sgpo.rollout.launcher import SGLangLauncher
from megatron_sgpo.rollout.sglang import SGLangClient

from .helpers import build_tiny_model, free_port


def start_pair(model_dir):
    launchers = [SGLangLauncher.sgpo(model_dir, free_port(), extra_args=["--threads", "1"]).start(wait=False)
                 for _ in range(2)]
    for launcher in launchers:
        launcher.wait_healthy(timeout_s=120)
    return launchers


def fleet_on(launchers):
    return EngineFleet([SGLangClient(L.url, launcher=L, timeout_s=60, max_retries=1, backoff_s=0.05)
                        for L in launchers])


def generate_requests(launcher):
    """How many /generate requests the server has answered, from its own request log."""
    return sum("POST /generate" in line for line in launcher.last_lines(400).splitlines())


@pytest.fixture(scope="module")
def no_eos_model(tmp_path_factory):
    """Without an EOS every sample runs to max_new_tokens, so the work queued is known."""
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_no_eos")), eos_token=None)


@pytest.fixture(scope="module")
def pair(no_eos_model):
    launchers = start_pair(no_eos_model)
    fleet = fleet_on(launchers)
    yield launchers, fleet
    fleet.close()
    for launcher in launchers:
        launcher.stop()


@pytest.mark.timeout(60)
def test_work_goes_to_both_engines_and_comes_back_in_prompt_order(pair):
    launchers, fleet = pair
    before = [generate_requests(L) for L in launchers]
    prompts = [[3 + i, 4 + i, 5 + i] for i in range(8)]
    ns = [3, 1, 0, 2, 4, 1, 2, 3]
    params = SamplingParams(max_new_tokens=6, seed=11)
    out = fleet.generate(prompts, ns, params)
    assert [len(g) for g in out] == ns
    assert all(c.prompt_index == i and len(c.token_ids) == 6 for i, g in enumerate(out) for c in g)
    served = [generate_requests(L) - b for L, b in zip(launchers, before)]
    assert sum(served) == 7 and min(served) >= 2, served  # one request per prompt with n > 0, on both engines
    # each prompt keeps its index in the call: the same seeded samples as one engine alone would give
    alone = EngineFleet([fleet.clients[0]]).generate(prompts, ns, params)
    assert [[c.token_ids for c in g] for g in out] == [[c.token_ids for c in g] for g in alone]


@pytest.mark.timeout(60)
def test_weights_reach_every_engine_and_versions_must_agree(pair, no_eos_model):
    launchers, fleet = pair
    norm = [("model.norm.weight", torch.ones(64))]  # the random model's own values: the outputs do not change
    fleet.begin_weight_update(5)
    fleet.update_weights(iter(norm), 5)  # a generator, as the weight sync's buckets may be
    fleet.end_weight_update(5)
    assert [c.weight_version for c in fleet.clients] == [5, 5] and fleet.weight_version == 5
    fleet.check_versions(5)
    with pytest.raises(EngineError, match="not at weight version 6") as e:
        fleet.check_versions(6)
    assert all(f"{L.url}: 5" in str(e.value) for L in launchers)
    fleet.clients[0].update_weights(norm, 7)  # one engine alone moves on
    with pytest.raises(EngineError, match="different weight versions") as e:
        fleet.weight_version
    assert f"{launchers[0].url}: 7" in str(e.value) and f"{launchers[1].url}: 5" in str(e.value)
    with pytest.raises(EngineError, match="not at weight version 7") as e:
        fleet.check_versions(7)
    assert launchers[1].url in str(e.value) and launchers[0].url not in str(e.value)
    fleet.update_weights(norm, 8)
    assert fleet.weight_version == 8 and fleet.health()


@pytest.mark.timeout(60)
def test_a_request_failing_on_a_healthy_engine_is_raised_and_takes_no_engine_out(pair):
    _, fleet = pair
    with pytest.raises(EngineError, match="HTTP 500: .*IndexError"):
        fleet.generate([[3, 4], [10**6]], [1, 1], SamplingParams(max_new_tokens=2))  # token id out of the vocab
    assert len(fleet.live()) == 2


@pytest.mark.timeout(90)
def test_engine_killed_mid_call_leaves_rotation_then_all_dead_names_every_url(no_eos_model, caplog):
    launchers = start_pair(no_eos_model)
    fleet = fleet_on(launchers)
    try:
        box = {}
        thread = threading.Thread(target=lambda: box.update(out=fleet.generate(
            [[3 + i, 9] for i in range(16)], [4] * 16, SamplingParams(max_new_tokens=200))))
        with caplog.at_level(logging.WARNING, logger="megatron_sgpo.rollout.fleet"):
            thread.start()
            time.sleep(1.5)
            assert thread.is_alive(), "the call ended before the kill: queue more work"
            launchers[1].kill()
            thread.join(60)
        assert not thread.is_alive() and "out" in box
        assert [len(g) for g in box["out"]] == [4] * 16
        assert all(len(c.token_ids) == 200 and c.finish_reason == "length" for g in box["out"] for c in g)
        assert [c.url for c in fleet.live()] == [launchers[0].url]
        assert generate_requests(launchers[0]) > 8  # its own half of the 16 prompts, and the dead engine's rest
        assert f"rollout engine {launchers[1].url} leaves the rotation" in caplog.text
        launchers[0].kill()
        t0 = time.monotonic()
        with pytest.raises(EngineError, match="no rollout engine left") as e:
            fleet.generate([[3, 4]], [2], SamplingParams(max_new_tokens=4))
        assert time.monotonic() - t0 < 15
        assert all(L.url in str(e.value) for L in launchers) and fleet.live() == []
    finally:
        fleet.close()
        for launcher in launchers:
            launcher.stop()
