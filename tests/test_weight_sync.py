"""After a training step at TP=2 and at PP=2, the synced engine scores tokens exactly as the trainer does."""
import pytest
import torch

from megatron_sgpo.weights.sync import buckets
from tests.distributed import load, torchrun


@pytest.fixture(scope="module", params=[(2, 1, "llama"), (1, 2, "llama"), (1, 2, "qwen2")],
                ids=["tp2", "pp2", "pp2-tied"])
def synced(request, tiny_models, tmp_path_factory):
    tp, pp, family = request.param
    out = str(tmp_path_factory.mktemp(f"sync_tp{tp}pp{pp}{family}"))
    torchrun("sync_worker.py", tp * pp, ["--hf", tiny_models[family], "--out", out, "--tp", str(tp), "--pp", str(pp)])
    return load(out, "engine.pt"), load(out, "trainer.pt")


def test_engine_logprobs_match_trainer_after_sync(synced):
    engine, trainer = synced
    assert (engine["after"] - trainer["logprobs"]).abs().max().item() <= 1e-4


def test_step_changed_the_weights_and_version_advanced(synced):
    engine, _ = synced
    assert (engine["after"] - engine["before"]).abs().max().item() > 1e-3  # the sync carried a real update
    assert engine["version"] == 1
    assert engine["stats"]["buckets"] > 1 and engine["stats"]["tensors"] > 0


def test_buckets_respect_size_and_keep_order():
    named = [(f"t{i}", torch.zeros(n)) for i, n in enumerate([10, 10, 30, 5, 100, 1])]
    out = list(buckets(named, bucket_bytes=80))  # fp32: 40, 40, 120, 20, 400, 4 bytes
    assert [[n for n, _ in b] for b in out] == [["t0", "t1"], ["t2"], ["t3"], ["t4"], ["t5"]]
    with pytest.raises(ValueError, match="bucket_bytes must be > 0"):
        list(buckets(named, 0))
