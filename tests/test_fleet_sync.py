"""TP=2 x PP=2 (4 gloo ranks) training, then a sync straight from each stage's sender to two `sgpo serve` engines
over every transport: both engines score their own greedy samples exactly as the trainer does, and no rank but
the two stage senders ever holds a full tensor."""
import pytest

from megatron_sgpo.platform.dist import free_port
from megatron_sgpo.rollout.launcher import SGLangLauncher
from tests.fleet_sync import TRANSPORTS, assert_engines_score_like_the_trainer, run_fleet_sync

DEAD = f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture(scope="module")
def synced(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("fleet_sync")
    launchers = [SGLangLauncher.sgpo(tiny_models["llama"], free_port(), extra_args=["--threads", "1"],
                                     log_path=str(out / f"engine{i}.log")).start(wait=False) for i in range(2)]
    return run_fleet_sync(launchers, tiny_models["llama"], out, 4, ["--tp", "2", "--pp", "2", "--dead-url", DEAD])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_engine_scores_like_the_trainer(synced, transport):
    assert len(synced[0][transport]["engines"]) == 2
    assert_engines_score_like_the_trainer(*synced, transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_engine_serves_the_new_version(synced, transport):
    engines, _ = synced
    assert [e["version"] for e in engines[transport]["engines"]] == [TRANSPORTS.index(transport) + 1] * 2


def test_successive_syncs_carried_new_weights(synced):
    """Each transport's sync followed another training step: the engines' scores moved every time."""
    engines, _ = synced
    first = [e["logprobs"] for e in engines["tensor"]["engines"]]
    for transport in TRANSPORTS[1:]:
        now = [e["logprobs"] for e in engines[transport]["engines"]]
        assert now != first
        first = now


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_only_the_stage_senders_hold_full_tensors(synced, transport):
    counts = synced[0][transport]["counts"]
    senders = [r for r, c in enumerate(counts) if c["sender"]]
    assert senders == [0, 2]  # TP rank 0 of stage 0 and of stage 1
    assert all(c["full_tensors"] == 0 and c["bytes"] == 0 for r, c in enumerate(counts) if r not in senders)
    stage0, stage1 = counts[0]["tensors"], counts[2]["tensors"]
    assert stage0 > 0 and stage1 > 0  # rank 0 sent its own stage only; stage 1 never passed through it
    assert counts[0]["full_tensors"] == stage0 and counts[2]["full_tensors"] == stage1


def test_at_tp2_the_senders_pack_the_gathered_tensors(synced):
    """Gathered TP shards are new tensors, not views of shared parameters: they go through the staging buffers."""
    counts = synced[0]["tensor"]["counts"]
    assert all(c["packed_bytes"] >= c["bytes"] > 0 for c in counts if c["sender"])


def test_a_dead_engine_is_left_out_of_the_sync_and_the_others_get_the_update(synced):
    beside = synced[0]["beside_dead"]
    assert beside["messages"] == [""] * 4
    assert DEAD not in beside["live"] and sorted(beside["live"].values()) == [len(TRANSPORTS) + 1] * 2


def test_a_sync_with_no_engine_left_fails_on_every_rank_after_one_retry(synced):
    failure = synced[0]["failure"]
    assert len(failure["messages"]) == 4
    for message in failure["messages"]:
        assert "failed twice" in message and DEAD in message and "must not serve" in message
    assert failure["seconds"] < 120  # the client's retries are bounded; nothing waits forever
