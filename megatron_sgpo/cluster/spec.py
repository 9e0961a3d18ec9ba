"""Inputs of the cluster planner: model dimensions (the project's ModelShape), the cluster, and the
sGPO workload.

Kept as plain dataclasses so that the formulas in the other modules take numbers, not files,
and tests can build tiny configurations by hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from megatron_sgpo.model.flops import ModelShape

GIB = 1024**3


@dataclass(frozen=True)
class ClusterSpec:
    """Hardware and the efficiency assumptions that turn peak numbers into times."""

    nodes: int
    gpus_per_node: int
    gpu_memory_gib: float
    peak_bf16_tflops: float
    peak_fp8_tflops: float
    hbm_GBps: float  # per GPU; decode is bound by it
    nvlink_GBps: float  # per GPU, unidirectional
    internode_GBps: float  # per GPU (e.g. 400 Gb/s IB = 50 GB/s)
    host_GBps: float = 25.0  # per GPU to host memory; offload of training state when colocated
    train_mfu: float = 0.40  # fraction of peak in compute; TP/DP traffic and PP bubble are added
    rollout_efficiency: float = 0.60  # achieved fraction of HBM bandwidth / peak in decode and prefill
    workspace_gib: float = 4.0  # CUDA context, NCCL buffers, allocator fragmentation (training)
    engine_workspace_gib: float = 3.0  # CUDA graphs, sampling buffers (inside the engine's fraction)
    engine_residual_gib: float = 1.0  # what a released SGLang engine still holds (context, graphs)
    sync_fixed_s: float = 2.0  # per weight sync: pause, flush_cache, bucket setup
    collective_latency_us: float = 10.0  # one small all-reduce inside a node (decode TP)
    flash_attention: bool = True  # fused attention stores no s x s matrices (drops 5as/h)
    name: str = "cluster"

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def gpu_memory_bytes(self) -> float:
        return self.gpu_memory_gib * GIB


@dataclass(frozen=True)
class GroupSizeBeta:
    """Group sizes drawn from profiled success rates: p ~ Beta(alpha, beta), n = clamp(ceil(1/p))."""

    alpha: float
    beta: float
    n_min: int = 2
    n_max: int = 64


@dataclass(frozen=True)
class WorkloadSpec:
    """One sGPO step and the run around it."""

    prompts_per_step: int
    prompt_len: int
    response_mean: float
    response_sigma: float  # sigma of log(length): log-normal
    response_max: int
    mean_group_size: float = 0.0  # used when group_size_beta is None
    group_size_beta: GroupSizeBeta | None = None
    train_global_batch: int = 0  # sequences per optimizer step; 0 = whole step in one
    micro_batch_size: int = 1
    logprob_passes: int = 2  # old-policy log-probs + reference (KL) log-probs
    profile_k: int = 8
    dataset_size: int = 0  # prompts profiled once; 0 disables profiling cost
    steps: int = 1
    mem_fraction: float = 0.6  # SGLang mem_fraction_static: weights + KV pool
    offload_training_when_colocated: bool = True
    fp8_training: bool = False
    # asynchronous RL (rollout.asynchronous): rollouts run ahead by this many weight versions, so on engines of
    # their own a step's generation overlaps the previous step's training; 0 = synchronous
    max_staleness: int = 0
    name: str = "workload"

    @property
    def max_seq(self) -> int:
        return self.prompt_len + self.response_max


def _build(cls, data: Mapping[str, Any], name: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known: {sorted(known)}")
    kwargs = dict(data)
    kwargs.setdefault("name", name)
    return cls(**kwargs)


def cluster_from_dict(data: Mapping[str, Any], name: str = "cluster") -> ClusterSpec:
    return _build(ClusterSpec, data, name)


def workload_from_dict(data: Mapping[str, Any], name: str = "workload") -> WorkloadSpec:
    data = dict(data)
    beta = data.pop("group_size_beta", None)
    if beta is not None:
        data["group_size_beta"] = GroupSizeBeta(**beta)
    if not data.get("mean_group_size") and beta is None:
        raise ValueError("workload: give mean_group_size or group_size_beta")
    return _build(WorkloadSpec, data, name)


@dataclass
class PlanInputs:
    model: ModelShape
    cluster: ClusterSpec
    workload: WorkloadSpec
    sources: dict = field(default_factory=dict)


def load_inputs(model_config: str | Path, cluster_yaml: str | Path,
                workload_overrides: Mapping[str, Any] | None = None) -> PlanInputs:
    """The cluster YAML holds a `cluster:` section and a `workload:` section."""
    with open(cluster_yaml) as f:
        doc = yaml.safe_load(f) or {}
    if "cluster" not in doc or "workload" not in doc:
        raise ValueError(f"{cluster_yaml}: needs top-level 'cluster:' and 'workload:' sections")
    stem = Path(cluster_yaml).stem
    workload = dict(doc["workload"])
    workload.update(workload_overrides or {})
    return PlanInputs(
        model=ModelShape.load(model_config),
        cluster=cluster_from_dict(doc["cluster"], name=stem),
        workload=workload_from_dict(workload, name=stem),
        sources={"model_config": str(model_config), "cluster_yaml": str(cluster_yaml)},
    )
