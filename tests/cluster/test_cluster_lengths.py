"""Response-length tail and sGPO group sizes, and how they move the rollout time."""
import math

import pytest

from megatron_sgpo.cluster import ClusterSpec, EngineLayout, GroupSizeBeta, LengthDist
from megatron_sgpo.cluster.lengths import mean_group_size_beta
from megatron_sgpo.cluster.timing import rollout_seconds
from megatron_sgpo.model.flops import ModelShape


def test_truncated_moments_match_untruncated_lognormal_when_cap_is_far():
    d = LengthDist(mean=100, sigma=0.5, max_len=100_000)
    assert d.truncated_mean == pytest.approx(100, rel=0.01)
    assert d.truncated_second_moment == pytest.approx(100**2 * math.exp(0.25), rel=0.02)


def test_truncation_lowers_the_mean_and_caps_the_max():
    d = LengthDist(mean=1000, sigma=1.0, max_len=1024)
    assert d.truncated_mean < 1000
    assert d.frac_truncated == pytest.approx(1 - 0.5 * math.erfc(-(math.log(1024) - d.mu) / 2**0.5),
                                             rel=1e-9)
    assert d.expected_max(10_000) == 1024


def test_expected_max_grows_with_batch():
    d = LengthDist(mean=500, sigma=0.6, max_len=10**6)
    maxes = [d.expected_max(n) for n in (8, 64, 512, 4096)]
    assert maxes == sorted(maxes) and maxes[0] > 500
    # n/(n+1) quantile by hand for n=64
    z = 2.1600  # inverse normal cdf of 64/65 (table value)
    assert d.expected_max(64) == pytest.approx(math.exp(d.mu + 0.6 * z), rel=1e-3)


def test_group_size_from_concentrated_beta_is_ceil_one_over_p():
    # p ~ 0.3 +- 0.005: ceil(1/p) = 4 for all mass
    assert mean_group_size_beta(GroupSizeBeta(3000, 7000, 2, 64)) == pytest.approx(4.0)
    # p ~ 0.9: ceil(1/p) = 2 (n_min 2 also holds it there); with n_min 3 the clamp wins
    assert mean_group_size_beta(GroupSizeBeta(9000, 1000, 2, 64)) == pytest.approx(2.0)
    assert mean_group_size_beta(GroupSizeBeta(9000, 1000, 3, 64)) == pytest.approx(3.0)
    # hard prompts hit the n_max clamp
    assert mean_group_size_beta(GroupSizeBeta(10, 9990, 2, 16)) == pytest.approx(16.0)


M = ModelShape(hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, vocab=128256)
CL = ClusterSpec(nodes=1, gpus_per_node=8, gpu_memory_gib=80, peak_bf16_tflops=989,
                 peak_fp8_tflops=1979, hbm_GBps=3350, nvlink_GBps=450, internode_GBps=50)


def _rollout(dist, engines=8, n=1024, kv=1e6):
    return rollout_seconds(M, CL, EngineLayout(1, engines), n, n // 8, 128, dist, kv)


def test_longer_tail_means_longer_rollout():
    short = _rollout(LengthDist(500, 0.3, 8192))
    heavy = _rollout(LengthDist(500, 1.0, 8192))
    assert heavy > short


def test_more_engines_do_not_slow_rollout_and_kv_limits_bite():
    d = LengthDist(500, 0.6, 4096)
    assert _rollout(d, engines=8) <= _rollout(d, engines=4)
    assert _rollout(d, kv=20_000) > _rollout(d, kv=1e7)


def test_decode_floor_is_the_weight_read_per_token_of_the_longest_response():
    d = LengthDist(50, 0.01, 4096)  # every response ~50 tokens
    t = _rollout(d, engines=1, n=1, kv=1e7)
    per_step = 2 * 7.5e9 / (3350e9 * 0.6)  # ~7.5B params in bf16 over achieved HBM bandwidth
    assert t == pytest.approx(50 * per_step, rel=0.1)
