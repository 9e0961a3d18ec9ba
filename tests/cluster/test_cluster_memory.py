"""Memory formulas (Korthikanti et al. 2022 activations, Adam bytes, KV cache) against hand values."""
import pytest

from megatron_sgpo.cluster import EngineLayout, TrainSetup
from megatron_sgpo.cluster.memory import (
    activation_bytes_per_layer,
    colocated_peak,
    engine_memory,
    in_flight_microbatches,
    kv_bytes_per_token,
    stage_memory,
    train_memory,
)
from megatron_sgpo.cluster.spec import GIB
from megatron_sgpo.model.flops import ModelShape
from megatron_sgpo.platform.layout import ParallelLayout

S, B, H, A, T = 2048, 2, 4096, 32, 4
SBH = S * B * H


def test_activation_no_recompute_sequence_parallel():
    expected = SBH * (34 / T + 5 * A * S / (H * T))
    assert activation_bytes_per_layer(S, B, H, A, T, True, "none") == pytest.approx(expected)
    # the hand number, to catch a formula and its test drifting together
    assert expected == pytest.approx(16_777_216 * (8.5 + 20.0))


def test_activation_without_sequence_parallel_keeps_replicated_part():
    expected = SBH * (10 + 24 / T + 5 * A * S / (H * T))
    assert activation_bytes_per_layer(S, B, H, A, T, False, "none") == pytest.approx(expected)


def test_selective_removes_attention_term_and_full_keeps_only_input():
    assert activation_bytes_per_layer(S, B, H, A, T, True, "selective") == pytest.approx(34 * SBH / T)
    assert activation_bytes_per_layer(S, B, H, A, T, True, "full") == pytest.approx(2 * SBH / T)
    assert activation_bytes_per_layer(S, B, H, A, 1, False, "none") == pytest.approx(
        SBH * (34 + 5 * A * S / H))


def test_flash_attention_equals_selective_memory():
    flash = activation_bytes_per_layer(S, B, H, A, T, True, "none", flash_attention=True)
    assert flash == activation_bytes_per_layer(S, B, H, A, T, True, "selective")


def test_in_flight_microbatches_1f1b_and_interleaved():
    assert in_flight_microbatches(4, 1, 8) == 4
    assert in_flight_microbatches(4, 1, 2) == 2  # fewer micro-batches than stages
    assert in_flight_microbatches(4, 2, 8) == pytest.approx(4 * (1 + 3 / 8))


SMALL = ModelShape(hidden=1024, layers=8, heads=16, kv_heads=4, ffn=4096, vocab=32000)


def test_weights_grads_and_adam_bytes_with_distributed_optimizer():
    lay = ParallelLayout(tp=2, pp=2, dp=4, sequence_parallel=True)
    first = stage_memory(SMALL, TrainSetup(lay, distributed_optimizer=True), 512, 8, 0.0, "first")
    layer = 1024 * 64 * (32 + 8) + 3 * 1024 * 4096 + 2 * 1024
    params = (4 * layer + 32768 * 1024) / 2  # 4 layers + embedding (32000 rows padded to 32 x 1024)
    assert first.params == params
    assert first.weights == 2 * params and first.grads == 4 * params
    assert first.optimizer == pytest.approx(12 * params / 4)
    plain = stage_memory(SMALL, TrainSetup(lay, distributed_optimizer=False), 512, 8, 0.0, "first")
    assert plain.optimizer == pytest.approx(12 * params)


def test_last_stage_holds_output_layer_and_logits_first_holds_in_flight_activations():
    setup = TrainSetup(ParallelLayout(tp=2, pp=4, dp=1, sequence_parallel=True))
    first = stage_memory(SMALL, setup, 512, 8, 0.0, "first")
    last = stage_memory(SMALL, setup, 512, 8, 0.0, "last")
    assert last.params - first.params == 1024 / 2  # final norm; embedding and output same size
    assert first.logits == 0 and last.logits == 2 * 4 * 512 * 32768 / 2
    assert first.activations == pytest.approx(4 * last.activations)  # 4 in flight vs 1
    assert train_memory(SMALL, setup, 512, 8, 0.0).total == max(first.total, last.total)


def test_kv_bytes_per_token_llama70b_shape():
    m = ModelShape(hidden=8192, layers=80, heads=64, kv_heads=8, ffn=28672, vocab=128256)
    assert kv_bytes_per_token(m, 1) == 2 * 80 * 8 * 128 * 2 == 327_680
    assert kv_bytes_per_token(m, 8) == 40_960
    assert kv_bytes_per_token(m, 16) == 40_960  # KV heads replicated beyond 8-way TP


def test_engine_kv_capacity_is_what_the_fraction_leaves():
    em = engine_memory(SMALL, EngineLayout(tp=1, engines=1), 10 * GIB, 0.5, GIB)
    weights = 2 * (8 * (1024 * 64 * 40 + 3 * 1024 * 4096 + 2048) + 2 * 32000 * 1024 + 1024)
    assert em.weights == weights
    assert em.kv_tokens == pytest.approx((5 * GIB - weights) / (2 * 8 * 4 * 64 * 2))
    assert em.peak == 6 * GIB


def test_colocated_peak_depends_on_offload():
    tm = stage_memory(SMALL, TrainSetup(ParallelLayout(dp=1)), 512, 1, GIB, "first")
    em = engine_memory(SMALL, EngineLayout(1, 1), 80 * GIB, 0.6, 2 * GIB)
    peak_off, phase_off = colocated_peak(tm, em, True, GIB)
    peak_on, _ = colocated_peak(tm, em, False, GIB)
    assert phase_off == "rollout" and peak_off == em.peak + tm.workspace
    assert peak_on == pytest.approx(em.peak + tm.workspace + tm.static)
