"""Parameter and FLOP counts against numbers worked out by hand."""
from pathlib import Path

import pytest

from megatron_sgpo.cluster import ModelSpec
from megatron_sgpo.cluster.flops import (decode_flops_per_token, forward_flops, megatron_paper_flops,
                                         padded_vocab, total_params, training_flops)

ROOT = Path(__file__).resolve().parents[2]
TINY = ModelSpec(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, vocab=100)


def test_tiny_llama_param_count_by_hand():
    # head_dim 16: q 64*64, k 64*32, v 64*32, o 64*64 = 12288; SwiGLU 3*64*128 = 24576; 2 norms 128
    per_layer = 12288 + 24576 + 128
    expected = 2 * per_layer + 100 * 64 + 100 * 64 + 64  # embedding, untied output, final norm
    assert total_params(TINY) == expected == 86848


def test_tied_embeddings_drop_the_output_matrix():
    tied = ModelSpec(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, vocab=100,
                     tied_embeddings=True)
    assert total_params(TINY) - total_params(tied) == 6400


def test_megatron_vocab_padding():
    assert padded_vocab(TINY, 1) == 128
    llama_vocab = ModelSpec(hidden=8, layers=1, heads=1, kv_heads=1, ffn=8, vocab=128256)
    assert padded_vocab(llama_vocab, 4) == 128512  # 128256 is not a multiple of 512
    assert total_params(TINY, tp=1) - total_params(TINY) == 2 * 28 * 64


def test_llama_70b_params():
    m = ModelSpec.load(ROOT / "examples/configs/llama-3.3-70b-config.json")
    per_layer = 8192 * 128 * (2 * 64 + 2 * 8) + 3 * 8192 * 28672 + 2 * 8192
    assert total_params(m) == 80 * per_layer + 2 * 128256 * 8192 + 8192 == 70_553_706_496


MHA = ModelSpec(hidden=256, layers=3, heads=8, kv_heads=8, ffn=1024, vocab=1000, gated_mlp=False)


@pytest.mark.parametrize("s", [128, 2048])
def test_training_flops_equal_narayanan_formula_for_mha(s):
    b = 3
    ours = b * training_flops(MHA, s, "none")
    assert ours == pytest.approx(megatron_paper_flops(b, s, 3, 256, 1000), rel=1e-12)
    ours_full = b * training_flops(MHA, s, "full")
    assert ours_full == pytest.approx(megatron_paper_flops(b, s, 3, 256, 1000, True), rel=1e-12)


def test_recompute_ordering_and_selective_adds_attention_core():
    s = 1024
    none, sel, full = (training_flops(MHA, s, r) for r in ("none", "selective", "full"))
    assert none < sel < full
    assert sel - none == 4 * 3 * s * s * 8 * 32  # 4 L s^2 a d


def test_forward_flops_by_hand():
    s = 10
    dense = 2 * s * (3 * (4 * 256 * 256 + 2 * 256 * 1024) + 1000 * 256)
    attn = 4 * 3 * s * s * 8 * 32
    assert forward_flops(MHA, s) == dense + attn


def test_decode_flops_grow_with_context():
    base = 2 * (3 * (4 * 256 * 256 + 2 * 256 * 1024) + 1000 * 256)
    assert decode_flops_per_token(MHA, 0) == base
    assert decode_flops_per_token(MHA, 100) == base + 4 * 3 * 100 * 8 * 32


def test_unknown_recompute_is_an_error():
    with pytest.raises(ValueError, match="recompute"):
        training_flops(MHA, 8, "partial")
