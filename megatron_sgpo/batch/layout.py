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
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

FP8_RECIPES = ("delayed", "tensorwise", "blockwise", "mxfp8")
_FP8_BLOCK_RECIPES = ("blockwise", "mxfp8")
FP8_ALIGN = 16
FP8_BLOCK_ALIGN = 128


@dataclass(frozen=True)
class ParallelLayout:
    """Degrees of parallelism of the training job, checked once at construction.

    ``vpp`` is the number of virtual pipeline stages per PP rank (interleaved schedule) or
    None. ``fp8_recipe`` None with ``fp8=True`` means megatron-core's default, "delayed".
    """

    dp: int = 1
    pp: int = 1
    vpp: Optional[int] = None
    tp: int = 1
    sequence_parallel: bool = False
    cp: int = 1
    fp8: bool = False
    fp8_recipe: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("dp", "pp", "tp", "cp"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"ParallelLayout.{name} must be an integer >= 1, got {value!r}")
        if self.vpp is not None:
            if isinstance(self.vpp, bool) or not isinstance(self.vpp, (int, np.integer)) or self.vpp < 1:
                raise ValueError(f"ParallelLayout.vpp must be None or an integer >= 1, got {self.vpp!r}")
            if self.pp < 2:
                raise ValueError(
                    f"ParallelLayout.vpp={self.vpp} needs pipeline parallelism (pp >= 2), got pp={self.pp}"
                )
        if self.sequence_parallel and self.tp < 2:
            raise ValueError(
                "ParallelLayout.sequence_parallel=True needs tensor parallelism (tp >= 2), "
                f"got tp={self.tp}"
            )
        if not self.fp8 and self.fp8_recipe is not None:
            raise ValueError(f"ParallelLayout.fp8_recipe={self.fp8_recipe!r} given but fp8=False")
        if self.fp8 and self.fp8_recipe is not None and self.fp8_recipe not in FP8_RECIPES:
            raise ValueError(
                f"ParallelLayout.fp8_recipe must be one of {FP8_RECIPES} (or None for 'delayed'), "
                f"got {self.fp8_recipe!r}"
            )


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
