"""FLOP formulas on a tiny Llama-like config, computed by hand, and the ledger's bookkeeping."""
import json

import pytest

from megatron_sgpo.algo.ledger import (
    ComputeLedger,
    ModelDims,
    attention_flops,
    forward_flops,
    inference_flops,
    logprob_flops,
    training_flops,
)

TINY = {
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


def test_dims_and_param_count_by_hand():
    d = ModelDims.from_hf_config(TINY)
    assert (d.head_dim, d.num_kv_heads, d.d_attn, d.gated_mlp, d.qkv_bias) == (16, 2, 64, True, False)
    # q 64*64 + k 64*32 + v 64*32 + o 64*64 = 12288 ; mlp 3*64*128 = 24576 ; norms 128
    assert d.layer_params == 12288 + 24576 + 128
    n = 2 * 36992 + 64 + 64 * 100
    assert d.non_embedding_params == n == 80448
    assert d.total_params == n  # tied: the LM head is the embedding
    untied = ModelDims.from_hf_config({**TINY, "tie_word_embeddings": False})
    assert untied.total_params == n + 6400


def test_qwen2_bias_and_explicit_head_dim():
    d = ModelDims.from_hf_config({**TINY, "model_type": "qwen2", "head_dim": 8})
    assert d.head_dim == 8 and d.qkv_bias
    assert d.layer_params == 64 * 8 * (8 + 4) + 8 * (4 + 4) + 24576 + 128


def test_flop_formulas_by_hand():
    d = ModelDims.from_hf_config(TINY)
    n = 80448
    # causal attention for T = 10: sum_t 4 * L * d_attn * t = 4*2*64*55
    assert attention_flops(d, 10) == 4 * 2 * 64 * 55 == 2 * 2 * 64 * 10 * 11
    fwd = 2 * n * 10 + 28160
    assert forward_flops(d, 10) == fwd
    assert inference_flops(d, 4, 6) == fwd
    assert training_flops(d, 10) == 6 * n * 10 + 3 * 28160
    assert logprob_flops(d, 10) == fwd


def test_ledger_totals_and_roundtrip():
    led = ComputeLedger()
    led.add("profiling", 100, 1_000)
    led.start_step(0)
    led.add("rollout", 50, 500)
    led.add("training", 50, 1_500)
    led.add("rollout", 10, 100)
    led.start_step(1)
    led.add("logprob", 60, 600)
    assert led.step_totals(-1) == {"profiling": {"tokens": 100, "flops": 1_000}}
    assert led.step_totals(0) == {"rollout": {"tokens": 60, "flops": 600}, "training": {"tokens": 50, "flops": 1_500}}
    phases = led.phase_totals()
    assert led.total_flops == sum(v["flops"] for v in phases.values()) == 3_700
    assert led.total_tokens == 270
    back = ComputeLedger.from_dict(json.loads(json.dumps(led.to_dict())))
    assert back.phase_totals() == phases and back.current_step == 1 and back.step_totals(0) == led.step_totals(0)


def test_ledger_errors():
    led = ComputeLedger()
    with pytest.raises(ValueError, match="phase must be one of"):
        led.add("eval", 1, 1)
    with pytest.raises(ValueError, match="tokens and flops must be >= 0"):
        led.add("rollout", -1, 1)
    led.start_step(3)
    with pytest.raises(ValueError, match="steps must not go backwards: 2 < 3"):
        led.start_step(2)
