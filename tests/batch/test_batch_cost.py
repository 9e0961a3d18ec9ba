"""The batcher's FLOPs model: coefficients from the model shape, and its shape in L."""
import numpy as np
import pytest

from megatron_sgpo.batch.cost import CostModel
from megatron_sgpo.model.flops import ModelShape


def test_from_shape_counts_matmul_weights_and_causal_attention():
    hidden, layers, heads, head_dim, ffn, vocab = 8, 2, 2, 4, 16, 10
    model = CostModel.from_shape(ModelShape(hidden, layers, heads, heads, ffn, vocab, head_dim=head_dim))
    qkv, out, mlp = 8 * (2 + 2 * 2) * 4, 2 * 4 * 8, 3 * 8 * 16
    assert model.a == 6 * (layers * (qkv + out + mlp) + hidden * vocab)
    assert model.b == 6 * layers * heads * head_dim
    gqa = CostModel.from_shape(ModelShape(hidden, layers, heads, 1, ffn, vocab, head_dim=head_dim, gated_mlp=False))
    assert gqa.a == 6 * (layers * (8 * (2 + 2) * 4 + out + 2 * 8 * 16) + hidden * vocab)


def test_cost_is_linear_plus_quadratic_in_length_without_overflow():
    model = CostModel(a=3.0, b=0.5)
    lengths = np.array([1, 10, 2**20])
    assert model(lengths).tolist() == [3.5, 80.0, 3.0 * 2**20 + 0.5 * 2.0**40]
    big = CostModel.from_shape(ModelShape(hidden=8192, layers=80, heads=64, kv_heads=64, ffn=28672, vocab=128256))
    assert np.all(np.isfinite(big(np.array([131072]))))
    assert big(np.array([2000]))[0] > 2 * big(np.array([1000]))[0]


@pytest.mark.parametrize("a, b", [(-1.0, 1.0), (1.0, -1.0), (0.0, 0.0)])
def test_invalid_coefficients_are_rejected(a, b):
    with pytest.raises(ValueError, match="CostModel needs"):
        CostModel(a, b)
