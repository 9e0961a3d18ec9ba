"""How the parallel layout constrains the length of one sequence.

Every sample is padded to a multiple of ``length_multiple(layout)`` before it is put in a
micro-batch, so the batcher counts padded tokens against its budget and estimates cost on
padded lengths. The rules, and why each exists:

* Context parallelism (cp > 1): Megatron load-balances causal attention by cutting each
  sequence into ``2·cp`` chunks and giving CP rank ``r`` chunks ``r`` and ``2·cp-1-r``.
  So the length must be a multiple of ``2·cp``.
* Sequence parallelism (needs tp > 1): activations outside the tensor-parallel GEMMs are
  split along the sequence over the tp ranks. What is split is the part of the sequence a
  CP rank holds, ``L / cp``, so ``L`` must be a multiple of ``tp·cp``. Together with the CP
  rule that is a multiple of ``tp·cp·2`` when both apply, which is the factor megatron-core
  itself pads to (``models/multimodal/context_parallel.py``). Plain ``lcm(tp, 2·cp)`` is not
  enough: tp=4, cp=2 would allow L=4, leaving each CP rank 2 tokens to split over 4 ranks.
* FP8 (Transformer Engine): FP8 GEMMs need their token dimension divisible by 16. For the
  block-scaled recipes ("blockwise" scales 1x128 tiles, "mxfp8" 32-element blocks) we
  require 128, which covers both (megatron-core's own MoE padding uses 32 for mxfp8; 128 is
  the conservative choice). The GEMM on a CP rank sees ``L / cp`` tokens, so the multiple
  is ``16·cp`` (or ``128·cp``).

The result is the least common multiple of every rule that applies.
"""
from __future__ import annotations

import math
from typing import Union

import numpy as np

from megatron_sgpo.platform.layout import ParallelLayout

_FP8_BLOCK_RECIPES = ("blockwise", "mxfp8")
FP8_ALIGN = 16
FP8_BLOCK_ALIGN = 128


def length_multiple(layout: ParallelLayout) -> int:
    """The number every padded sequence length is a multiple of (see the module docstring)."""
    m = 1
    if layout.cp > 1:
        m = math.lcm(m, 2 * layout.cp)
    if layout.sequence_parallel:
        m = math.lcm(m, layout.tp * layout.cp)
    if layout.fp8:
        align = FP8_BLOCK_ALIGN if layout.fp8_recipe in _FP8_BLOCK_RECIPES else FP8_ALIGN
        m = math.lcm(m, align * layout.cp)
    return m


def pad_length(length: Union[int, np.ndarray], layout: ParallelLayout) -> Union[int, np.ndarray]:
    """Smallest multiple of ``length_multiple(layout)`` that is >= ``length``; works on arrays."""
    m = length_multiple(layout)
    if isinstance(length, np.ndarray):
        return (-(-length.astype(np.int64) // m)) * m
    return int(-(-int(length) // m) * m)
