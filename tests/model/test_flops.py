"""The one model shape and its three FLOP conventions (ledger, batcher, MFU), against numbers worked out by hand."""
from pathlib import Path

import pytest

from megatron_sgpo.model.flops import (
    ModelShape,
    attention_flops,
    batch_cost_coefficients,
    decode_flops_per_token,
    forward_flops,
    inference_flops,
    logprob_flops,
    megatron_paper_flops,
    mfu_forward_flops,
    mfu_training_flops,
    training_flops,
)

HF_TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 100,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
}


def test_shape_from_hf_config_and_ledger_param_count_by_hand():
    d = ModelShape.from_hf_config(HF_TINY)
    assert (d.head_dim, d.kv_heads, d.d_attn, d.gated_mlp, d.qkv_bias) == (16, 2, 64, True, False)
    # q 64*64 + k 64*32 + v 64*32 + o 64*64 = 12288 ; mlp 3*64*128 = 24576 ; norms 128
    assert d.layer_params == 12288 + 24576 + 128
    n = 2 * 36992 + 64 + 64 * 100
    assert d.non_embedding_params == n == 80448
    assert d.total_params() == n  # tied: the LM head is the embedding
    untied = ModelShape.from_hf_config({**HF_TINY, "tie_word_embeddings": False})
    assert untied.total_params() == n + 6400


def test_qwen2_bias_and_explicit_head_dim():
    d = ModelShape.from_hf_config({**HF_TINY, "model_type": "qwen2", "head_dim": 8})
    assert d.head_dim == 8 and d.qkv_bias
    assert d.layer_params == 64 * 8 * (8 + 4) + 8 * (4 + 4) + 24576 + 128


def test_ledger_flop_formulas_by_hand():
    d = ModelShape.from_hf_config(HF_TINY)
    n = 80448
    # causal attention for T = 10: sum_t 4 * L * d_attn * t = 4*2*64*55
    assert attention_flops(d, 10) == 4 * 2 * 64 * 55 == 2 * 2 * 64 * 10 * 11
    fwd = 2 * n * 10 + 28160
    assert forward_flops(d, 10) == fwd
    assert inference_flops(d, 4, 6) == fwd
    assert training_flops(d, 10) == 6 * n * 10 + 3 * 28160
    assert logprob_flops(d, 10) == fwd


def test_batcher_coefficients_are_six_times_matmul_weights_and_causal_attention():
    d = ModelShape.from_hf_config(HF_TINY)
    a, b = batch_cost_coefficients(d)
    assert a == 6 * (2 * (12288 + 24576) + 100 * 64) and b == 6 * 2 * 64
    # the three conventions agree on the dense matmul part and differ only where documented
    assert mfu_forward_flops(d, 1) - 4 * 2 * 64 == a / 3

ROOT = Path(__file__).resolve().parents[2]
TINY = ModelShape(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, vocab=100)


def test_tiny_llama_param_count_by_hand():
    # head_dim 16: q 64*64, k 64*32, v 64*32, o 64*64 = 12288; SwiGLU 3*64*128 = 24576; 2 norms 128
    per_layer = 12288 + 24576 + 128
    expected = 2 * per_layer + 100 * 64 + 100 * 64 + 64  # embedding, untied output, final norm
    assert TINY.total_params() == expected == 86848


def test_tied_embeddings_drop_the_output_matrix():
    tied = ModelShape(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, vocab=100,
                      tied_embeddings=True)
    assert TINY.total_params() - tied.total_params() == 6400


def test_vocab_padding_of_the_built_model():
    assert TINY.padded_vocab(1) == TINY.padded_vocab(2) == 1024  # a multiple of 128 x 8, the same at every TP
    llama_vocab = ModelShape(hidden=8, layers=1, heads=1, kv_heads=1, ffn=8, vocab=128256)
    assert llama_vocab.padded_vocab(4) == 129024
    assert TINY.total_params(tp=1) - TINY.total_params() == 2 * (1024 - 100) * 64


def test_llama_70b_params():
    m = ModelShape.load(ROOT / "examples/configs/llama-3.3-70b-config.json")
    per_layer = 8192 * 128 * (2 * 64 + 2 * 8) + 3 * 8192 * 28672 + 2 * 8192
    assert m.total_params() == 80 * per_layer + 2 * 128256 * 8192 + 8192 == 70_553_706_496


MHA = ModelShape(hidden=256, layers=3, heads=8, kv_heads=8, ffn=1024, vocab=1000, gated_mlp=False)


@pytest.mark.parametrize("s", [128, 2048])
def test_training_flops_equal_narayanan_formula_for_mha(s):
    b = 3
    ours = b * mfu_training_flops(MHA, s, "none")
    assert ours == pytest.approx(megatron_paper_flops(b, s, 3, 256, 1000), rel=1e-12)
    ours_full = b * mfu_training_flops(MHA, s, "full")
    assert ours_full == pytest.approx(megatron_paper_flops(b, s, 3, 256, 1000, True), rel=1e-12)


def test_recompute_ordering_and_selective_adds_attention_core():
    s = 1024
    none, sel, full = (mfu_training_flops(MHA, s, r) for r in ("none", "selective", "full"))
    assert none < sel < full
    assert sel - none == 4 * 3 * s * s * 8 * 32  # 4 L s^2 a d


def test_forward_flops_by_hand():
    s = 10
    dense = 2 * s * (3 * (4 * 256 * 256 + 2 * 256 * 1024) + 1000 * 256)
    attn = 4 * 3 * s * s * 8 * 32
    assert mfu_forward_flops(MHA, s) == dense + attn


def test_decode_flops_grow_with_context():
    base = 2 * (3 * (4 * 256 * 256 + 2 * 256 * 1024) + 1000 * 256)
    assert decode_flops_per_token(MHA, 0) == base
    assert decode_flops_per_token(MHA, 100) == base + 4 * 3 * 100 * 8 * 32


def test_unknown_recompute_is_an_error():
    with pytest.raises(ValueError, match="recompute"):
        mfu_training_flops(MHA, 8, "partial")
