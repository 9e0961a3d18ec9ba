"""Training cost of one sequence, in FLOPs, as ``a·L + b·L²``.

Balancing on token counts alone under-weights long responses: attention grows with L², and
sGPO's long tail is exactly where that term matters. The coefficients come from the model's
shape (:func:`megatron_sgpo.model.flops.batch_cost_coefficients`, where the formula is written
out); only ratios between samples matter to the batcher.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_sgpo.model.flops import ModelShape, batch_cost_coefficients


@dataclass(frozen=True)
class CostModel:
    """FLOPs(L) = a·L + b·L² for one sequence of L (padded) tokens."""

    a: float
    b: float

    def __post_init__(self) -> None:
        if not (self.a >= 0 and self.b >= 0) or (self.a == 0 and self.b == 0):
            raise ValueError(f"CostModel needs a >= 0, b >= 0, not both 0; got a={self.a}, b={self.b}")

    @classmethod
    def from_shape(cls, shape: ModelShape) -> "CostModel":
        return cls(*batch_cost_coefficients(shape))

    def __call__(self, lengths: np.ndarray) -> np.ndarray:
        """FLOPs of each sequence, as float64 (int64 would overflow at 70B-scale L²)."""
        length = np.asarray(lengths, dtype=np.float64)
        return self.a * length + self.b * length * length
