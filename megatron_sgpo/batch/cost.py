"""Training cost of one sequence, in FLOPs, as ``a·L + b·L²``.

Balancing on token counts alone under-weights long responses: attention grows with L², and
sGPO's long tail is exactly where that term matters. The two coefficients come from the
model's dimensions, counting a multiply-add as 2 FLOPs and training (forward + backward) as
3x the forward pass:

* ``a`` (per token): every weight matrix is applied once per token, 2 FLOPs per weight
  forward, so ``a = 6 · N_matmul`` with
  ``N_matmul = layers · (hidden·(heads + 2·kv_heads)·head_dim   # Q, K, V projections
                          + heads·head_dim·hidden               # attention output
                          + m·hidden·ffn)                       # MLP, m = 3 gated / 2 plain
               + hidden·vocab``                                 # output layer (logits)
  The input embedding is a lookup and costs nothing; norms, biases and the softmax are left
  out (they are O(hidden) per token, a fraction of a percent).
* ``b`` (per token pair): causal attention computes Q·Kᵀ and P·V, each
  ``2·L²·head_dim`` FLOPs per head if full, half of that with the causal mask, so the forward
  pass costs ``2·heads·head_dim·L²`` per layer and training
  ``b = 6 · layers · heads · head_dim`` (= 6·layers·2·heads·head_dim·L²/2). Flash attention's
  recomputation in the backward pass is not counted.

Only ratios between samples matter to the batcher, so the approximations are harmless as
long as they are the same for every sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class CostModel:
    """FLOPs(L) = a·L + b·L² for one sequence of L (padded) tokens."""

    a: float
    b: float

    def __post_init__(self) -> None:
        if not (self.a >= 0 and self.b >= 0) or (self.a == 0 and self.b == 0):
            raise ValueError(f"CostModel needs a >= 0, b >= 0, not both 0; got a={self.a}, b={self.b}")

    @classmethod
    def from_dims(
        cls,
        hidden: int,
        layers: int,
        heads: int,
        head_dim: int,
        ffn: int,
        vocab: int,
        *,
        kv_heads: Optional[int] = None,
        gated_mlp: bool = True,
    ) -> "CostModel":
        """Coefficients for training a dense decoder (see the module docstring for the formula).

        ``kv_heads`` defaults to ``heads`` (no GQA); ``gated_mlp`` is True for SwiGLU models
        (Llama, Qwen, Mistral).
        """
        kv = heads if kv_heads is None else kv_heads
        mlp_mats = 3 if gated_mlp else 2
        per_layer = hidden * (heads + 2 * kv) * head_dim + heads * head_dim * hidden + mlp_mats * hidden * ffn
        n_matmul = layers * per_layer + hidden * vocab
        return cls(a=6.0 * n_matmul, b=6.0 * layers * heads * head_dim)

    def __call__(self, lengths: np.ndarray) -> np.ndarray:
        """FLOPs of each sequence, as float64 (int64 would overflow at 70B-scale L²)."""
        length = np.asarray(lengths, dtype=np.float64)
        return self.a * length + self.b * length * length
