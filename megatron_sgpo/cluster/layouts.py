"""Training and engine layouts, and the divisibility rules that make a layout buildable at all.

Each rule returns the reason with the numbers, so a rejected layout tells the user what to change.
Uneven pipeline stages are not allowed: megatron-core can build them, but the memory and bubble
formulas here assume equal stages, so PP (and PP x VPP) must divide the layer count.
"""
from __future__ import annotations

from dataclasses import dataclass

from .spec import ModelSpec


@dataclass(frozen=True)
class TrainLayout:
    tp: int
    pp: int
    dp: int
    cp: int = 1
    vpp: int = 1
    sequence_parallel: bool = False
    recompute: str = "none"  # none | selective | full
    distributed_optimizer: bool = True
    micro_batch_size: int = 1

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp * self.cp

    def label(self) -> str:
        parts = [f"TP{self.tp}", f"PP{self.pp}"]
        if self.vpp > 1:
            parts.append(f"VPP{self.vpp}")
        if self.cp > 1:
            parts.append(f"CP{self.cp}")
        parts.append(f"DP{self.dp}")
        if self.tp > 1 and not self.sequence_parallel:
            parts.append("noSP")
        return "/".join(parts)


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


def train_divisibility(model: ModelSpec, lay: TrainLayout, gpus_per_node: int,
                       max_seq: int) -> list[str]:
    """Reasons this training layout cannot be built; empty when it can."""
    why = []
    if lay.tp > gpus_per_node or gpus_per_node % lay.tp:
        why.append(f"TP={lay.tp} must divide gpus_per_node={gpus_per_node} (TP stays inside NVLink)")
    if model.heads % lay.tp:
        why.append(f"heads={model.heads} not divisible by TP={lay.tp}")
    if model.kv_heads % lay.tp:
        why.append(f"kv_heads={model.kv_heads} not divisible by TP={lay.tp}")
    if model.layers % lay.pp:
        why.append(f"layers={model.layers} not divisible by PP={lay.pp}")
    elif lay.vpp > 1 and model.layers % (lay.pp * lay.vpp):
        why.append(f"layers={model.layers} not divisible by PP*VPP={lay.pp * lay.vpp}")
    if lay.vpp > 1 and lay.pp < 2:
        why.append(f"VPP={lay.vpp} needs PP>=2")
    if lay.cp > 1 and max_seq % (2 * lay.cp):
        why.append(f"sequence {max_seq} not divisible by 2*CP={2 * lay.cp} (load-balanced CP chunks)")
    if lay.sequence_parallel and lay.tp == 1:
        why.append("sequence parallel needs TP>1")
    return why


def engine_divisibility(model: ModelSpec, eng: EngineLayout, gpus_per_node: int) -> list[str]:
    why = []
    if eng.tp > gpus_per_node or gpus_per_node % eng.tp:
        why.append(f"engine TP={eng.tp} must divide gpus_per_node={gpus_per_node}")
    if model.heads % eng.tp:
        why.append(f"heads={model.heads} not divisible by engine TP={eng.tp}")
    if model.kv_heads % eng.tp and eng.tp % model.kv_heads:
        why.append(f"kv_heads={model.kv_heads} and engine TP={eng.tp}: neither divides the other")
    return why
