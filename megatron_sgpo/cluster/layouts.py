"""What the planner varies per candidate, and the divisibility rules that make one buildable at all.

The training side is the project's :class:`ParallelLayout` plus the non-parallel choices that trade
memory for time (:class:`TrainSetup`); the engine side and the placement are the planner's own.
Each rule returns the reason with the numbers, so a rejected layout tells the user what to change.
Uneven pipeline stages are not allowed: megatron-core can build them, but the memory and bubble
formulas here assume equal stages, so PP (and PP x VPP) must divide the layer count.
"""
from __future__ import annotations

from dataclasses import dataclass

from megatron_sgpo.model.flops import RECOMPUTE, ModelShape
from megatron_sgpo.platform.layout import ParallelLayout


@dataclass(frozen=True)
class TrainSetup:
    """A training candidate: the parallel layout (dp set) and the choices that are not parallelism."""

    layout: ParallelLayout
    recompute: str = "none"  # none | selective | full
    distributed_optimizer: bool = True
    micro_batch_size: int = 1

    def __post_init__(self) -> None:
        if self.recompute not in RECOMPUTE:
            raise ValueError(f"recompute must be one of {RECOMPUTE}, got {self.recompute!r}")

    def label(self) -> str:
        return self.layout.label()


@dataclass(frozen=True)
class EngineLayout:
    tp: int
    engines: int

    @property
    def gpus(self) -> int:
        return self.tp * self.engines

    def label(self) -> str:
        return f"{self.engines}xTP{self.tp}"


@dataclass(frozen=True)
class Placement:
    """colocated: training and engines share all GPUs; else engines own `engine_nodes` nodes."""

    colocated: bool
    train_nodes: int
    engine_nodes: int

    def label(self) -> str:
        return "colocated" if self.colocated else f"split {self.train_nodes}+{self.engine_nodes}n"


def train_divisibility(model: ModelShape, lay: ParallelLayout, gpus_per_node: int,
                       max_seq: int) -> list[str]:
    """Reasons this training layout cannot split the model; empty when it can.

    ParallelLayout itself already refuses VPP without PP and SP without TP.
    """
    why = []
    if lay.tp > gpus_per_node or gpus_per_node % lay.tp:
        why.append(f"TP={lay.tp} must divide gpus_per_node={gpus_per_node} (TP stays inside NVLink)")
    if model.heads % lay.tp:
        why.append(f"heads={model.heads} not divisible by TP={lay.tp}")
    if model.kv_heads % lay.tp:
        why.append(f"kv_heads={model.kv_heads} not divisible by TP={lay.tp}")
    if model.layers % lay.pp:
        why.append(f"layers={model.layers} not divisible by PP={lay.pp}")
    elif lay.vpp and model.layers % lay.stages:
        why.append(f"layers={model.layers} not divisible by PP*VPP={lay.stages}")
    if lay.cp > 1 and max_seq % (2 * lay.cp):
        why.append(f"sequence {max_seq} not divisible by 2*CP={2 * lay.cp} (load-balanced CP chunks)")
    return why


def engine_divisibility(model: ModelShape, eng: EngineLayout, gpus_per_node: int) -> list[str]:
    why = []
    if eng.tp > gpus_per_node or gpus_per_node % eng.tp:
        why.append(f"engine TP={eng.tp} must divide gpus_per_node={gpus_per_node}")
    if model.heads % eng.tp:
        why.append(f"heads={model.heads} not divisible by engine TP={eng.tp}")
    if model.kv_heads % eng.tp and eng.tp % model.kv_heads:
        why.append(f"kv_heads={model.kv_heads} and engine TP={eng.tp}: neither divides the other")
    return why
