"""After a training step at TP=2 and at PP=2, the synced engine scores tokens exactly as the trainer does."""
import pytest
import torch

from megatron_sgpo.weights.stage_tensors import buckets
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


@pytest.mark.parametrize("tp", [1, 2])
def test_the_mapping_writes_what_it_must_copy_into_the_scratch_and_maps_the_same(tp):
    """With a scratch, the sync's mapping gives the same HF tensors; the copies (regrouped query heads, gathered
    shards) land in the scratch's reused memory, and a single shard's other tensors stay views of it."""
    from megatron_sgpo.model.mapping import WeightMapping
    from megatron_sgpo.weights.transports import SharedScratch, in_shared_memory

    cfg = {"architectures": ["LlamaForCausalLM"], "num_attention_heads": 4, "num_key_value_heads": 2,
           "hidden_size": 8, "vocab_size": 200, "intermediate_size": 6}
    mapping, scratch = WeightMapping(cfg, tp), SharedScratch()
    full = {"decoder.layers.0.self_attention.linear_qkv.weight": torch.randn(16, 8),
            "decoder.layers.0.mlp.linear_fc1.weight": torch.randn(12, 8),
            "decoder.layers.0.mlp.linear_fc2.weight": torch.randn(8, 6),
            "embedding.word_embeddings.weight": torch.randn(mapping.padded_vocab, 8)}
    for name, tensor in full.items():
        kind = mapping.rule(name).kind
        shards = [tensor.chunk(tp, dim=1 if kind == "dim1" else 0)[r] for r in range(tp)]
        if kind == "fc1":  # rank r holds [gate_r; up_r]
            gate, up = tensor.chunk(2)
            shards = [torch.cat([g, u]) for g, u in zip(gate.chunk(tp), up.chunk(tp))]
        plain = mapping.to_hf(name, shards)
        first = mapping.to_hf(name, shards, scratch)
        again = mapping.to_hf(name, shards, scratch)
        assert [n for n, _ in first] == [n for n, _ in plain]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first, plain)), name
        for (hf_name, a), (_, b) in zip(first, again):
            copied = tp > 1 or kind == "qkv"
            assert in_shared_memory([(hf_name, a)]) == copied, hf_name
            assert a.data_ptr() == b.data_ptr()  # the same memory at every sync
            if not copied:
                assert a.untyped_storage().data_ptr() == shards[0].untyped_storage().data_ptr()
