"""The parallel layout of a training job: the one type the model, batcher, trainer and planner share.

TP, PP, VPP, CP and DP sizes, sequence parallelism and the FP8 format all change how a model is
split and how long a micro-batch's sequences must be, so they travel together and are checked once,
when the layout is made. DP is usually not chosen but left over: ``dp=None`` in a run config means
"whatever the world size leaves", and :meth:`ParallelLayout.with_world` fills it in at start.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Optional

import numpy as np

from megatron_sgpo.choices import check_choices


def _is_size(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


@dataclass(frozen=True)
class ParallelLayout:
    """Degrees of parallelism and the FP8 format; invalid combinations fail at construction.

    ``vpp``: virtual pipeline stages per PP rank (interleaved schedule) or None. ``fp8``: the
    Transformer Engine FP8 format or None; ``fp8_recipe`` None with FP8 on means megatron's default,
    "delayed".
    """

    tp: int = 1
    pp: int = 1
    vpp: Optional[int] = None
    cp: int = 1
    dp: Optional[int] = None
    sequence_parallel: bool = False
    fp8: Optional[Literal["e4m3", "hybrid"]] = None
    fp8_recipe: Optional[Literal["delayed", "tensorwise", "blockwise", "mxfp8"]] = None

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "cp"):
            if not _is_size(getattr(self, name)):
                raise ValueError(f"parallel size {name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.dp is not None and not _is_size(self.dp):
            raise ValueError(f"parallel size dp must be None or an integer >= 1, got {self.dp!r}")
        if self.vpp is not None:
            if not _is_size(self.vpp):
                raise ValueError(f"parallel size vpp must be None or an integer >= 1, got {self.vpp!r}")
            if self.pp < 2:
                raise ValueError(f"vpp={self.vpp} needs pipeline parallelism (pp >= 2), got pp={self.pp}")
        if self.sequence_parallel and self.tp < 2:
            raise ValueError(f"sequence_parallel=True needs tensor parallelism (tp >= 2), got tp={self.tp}")
        check_choices(self)
        if self.fp8 is None and self.fp8_recipe is not None:
            raise ValueError(f"fp8_recipe={self.fp8_recipe!r} given but fp8 is off")

    @property
    def model_parallel_size(self) -> int:
        return self.tp * self.pp * self.cp

    @property
    def stages(self) -> int:
        """Model chunks the layers are cut into: pp × vpp."""
        return self.pp * (self.vpp or 1)

    @property
    def gpus(self) -> int:
        return self.model_parallel_size * self.resolved_dp()

    def resolved_dp(self) -> int:
        if self.dp is None:
            raise ValueError("the layout's dp is not set yet: ParallelLayout.with_world(world_size) sets it")
        return self.dp

    def data_parallel_size(self, world_size: int) -> int:
        """DP that ``world_size`` ranks leave; an explicit ``dp`` must agree with it."""
        mp = self.model_parallel_size
        if world_size % mp != 0:
            raise ValueError(f"world size {world_size} is not divisible by "
                             f"tp*pp*cp = {self.tp}*{self.pp}*{self.cp} = {mp}")
        dp = world_size // mp
        if self.dp is not None and self.dp != dp:
            raise ValueError(f"dp={self.dp} but world size {world_size} / (tp*pp*cp={mp}) gives dp={dp}")
        return dp

    def with_world(self, world_size: int) -> "ParallelLayout":
        return replace(self, dp=self.data_parallel_size(world_size))

    def label(self) -> str:
        """Short name, e.g. TP4/PP4/VPP2/DP4 (noSP when TP > 1 runs without sequence parallelism)."""
        parts = [f"TP{self.tp}", f"PP{self.pp}"]
        if (self.vpp or 1) > 1:
            parts.append(f"VPP{self.vpp}")
        if self.cp > 1:
            parts.append(f"CP{self.cp}")
        parts.append(f"DP{self.resolved_dp()}")
        if self.tp > 1 and not self.sequence_parallel:
            parts.append("noSP")
        if self.fp8:
            parts.append("FP8")
        return "/".join(parts)
