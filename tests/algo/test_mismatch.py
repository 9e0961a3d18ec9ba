"""Train–inference mismatch: its metrics and the truncated-IS / masking weights, against hand-computed values."""
import math

import pytest
import torch

from megatron_sgpo.algo.mismatch import MismatchConfig, mismatch_weights

OLD = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-0.2, -3.0, 0.0, 0.0]], dtype=torch.float64)
ENGINE = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-0.2, -1.0, 0.0, 0.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float64)
D = [[0.5, -1.0, 0.0], [0.0, -2.0]]  # old - engine on the response tokens


def test_metrics_by_hand_and_no_correction_by_default():
    w, m = mismatch_weights(OLD, ENGINE, MASK, MismatchConfig())
    flat = [d for row in D for d in row]
    assert m["mismatch_abs_sum"].item() == pytest.approx(sum(abs(d) for d in flat))
    assert m["mismatch_kl_sum"].item() == pytest.approx(sum(math.exp(d) - 1 - d for d in flat))
    assert torch.equal(w, torch.ones_like(w)) and m["masked_tokens"].item() == 0
    assert not MismatchConfig().corrects


def test_kl_metric_stays_accurate_in_fp32_for_tiny_mismatches():
    """exp(d) - 1 - d in fp32 is rounding noise at |d| ~ 1e-4 (engines that agree to 1e-5 per token); the
    metric must still read d^2/2."""
    d = torch.full((1, 64), 1e-4, dtype=torch.float32)
    _, m = mismatch_weights(d, torch.zeros_like(d), torch.ones_like(d), MismatchConfig())
    assert m["mismatch_kl_sum"].item() == pytest.approx(64 * 1e-8 / 2, rel=1e-3)


def test_token_level_truncated_importance_weights():
    w, m = mismatch_weights(OLD, ENGINE, MASK, MismatchConfig(tis="token", tis_cap=1.5))
    expect = [[min(math.exp(0.5), 1.5), math.exp(-1.0), 1.0], [1.0, math.exp(-2.0)]]
    for row, values in enumerate(expect):
        assert w[row, : len(values)].tolist() == pytest.approx(values)
    assert m["is_weight_sum"].item() == pytest.approx(sum(map(sum, expect)))
    assert float(w.max()) <= 1.5


def test_sequence_level_weight_is_the_capped_product_of_ratios():
    w, _ = mismatch_weights(OLD, ENGINE, MASK, MismatchConfig(tis="sequence", tis_cap=2.0))
    assert w[0, :3].tolist() == pytest.approx([math.exp(-0.5)] * 3)
    assert w[1, :2].tolist() == pytest.approx([math.exp(-2.0)] * 2)
    capped, _ = mismatch_weights(ENGINE, OLD, MASK, MismatchConfig(tis="sequence", tis_cap=2.0))
    assert capped[1, :2].tolist() == [2.0, 2.0]  # e^{+2} is truncated at the cap


def test_masking_drops_tokens_outside_the_ratio_band():
    w, m = mismatch_weights(OLD, ENGINE, MASK, MismatchConfig(mask_low=0.5, mask_high=1.5))
    # ratios e^{0.5}=1.65 (out), e^{-1}=0.37 (out), 1 (in); 1 (in), e^{-2} (out)
    assert w[0, :3].tolist() == [0.0, 0.0, 1.0] and w[1, :2].tolist() == [1.0, 0.0]
    assert m["masked_tokens"].item() == 3 and MismatchConfig(mask_low=0.5, mask_high=1.5).corrects
