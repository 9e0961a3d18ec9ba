"""Cluster planner: which training/engine layout runs an sGPO step fastest on given GPUs.

Pure arithmetic over an HF config, a cluster description and the workload; no GPU needed.
"""
from .flops import (decode_flops_per_token, forward_flops, megatron_paper_flops, total_params,
                    training_flops)
from .layouts import EngineLayout, Placement, TrainLayout
from .lengths import LengthDist, mean_group_size
from .memory import (activation_bytes_per_layer, colocated_peak, engine_memory,
                     kv_bytes_per_token, train_memory)
from .planner import Candidate, Plan, Planner, plan
from .spec import ClusterSpec, GroupSizeBeta, ModelSpec, PlanInputs, WorkloadSpec, load_inputs
from .timing import StepTime

__all__ = [
    "ClusterSpec", "GroupSizeBeta", "ModelSpec", "PlanInputs", "WorkloadSpec", "load_inputs",
    "TrainLayout", "EngineLayout", "Placement", "LengthDist", "mean_group_size",
    "total_params", "forward_flops", "training_flops", "decode_flops_per_token",
    "megatron_paper_flops", "activation_bytes_per_layer", "train_memory", "engine_memory",
    "kv_bytes_per_token", "colocated_peak", "Candidate", "Plan", "Planner", "plan", "StepTime",
]
