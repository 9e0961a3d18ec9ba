"""Cluster planner: which training/engine layout runs an sGPO step fastest on given GPUs.

Pure arithmetic over an HF config, a cluster description and the workload; no GPU needed.
Model shapes and FLOP counts come from ``megatron_sgpo.model.flops`` (ModelShape, mfu_* functions),
training layouts are ``megatron_sgpo.platform.layout.ParallelLayout`` wrapped in a TrainSetup.
"""
from .layouts import EngineLayout, Placement, TrainSetup
from .lengths import LengthDist, mean_group_size
from .memory import activation_bytes_per_layer, colocated_peak, engine_memory, kv_bytes_per_token, train_memory
from .planner import Candidate, LayoutRanking, Planner, rank_layouts
from .spec import ClusterSpec, GroupSizeBeta, PlanInputs, WorkloadSpec, load_inputs
from .timing import StepTime

__all__ = [
    "ClusterSpec", "GroupSizeBeta", "PlanInputs", "WorkloadSpec", "load_inputs",
    "TrainSetup", "EngineLayout", "Placement", "LengthDist", "mean_group_size",
    "activation_bytes_per_layer", "train_memory", "engine_memory", "kv_bytes_per_token",
    "colocated_peak", "Candidate", "LayoutRanking", "Planner", "rank_layouts", "StepTime",
]
