"""Predicted time of one on-policy sGPO step, phase by phase, from the FLOP and byte counts.

rollout   prefill: compute-bound, the prompt once per group (radix/prefix cache);
          decode: per engine step time = max(bytes read / (HBM * eff), FLOPs / (peak * eff))
          + 2 TP all-reduces per layer; bytes = this GPU's weights + the KV of every active
          sequence. Fluid model: sequences beyond the KV-limited concurrency run at full
          concurrency with the mean length; then the batch drains, active(k) = conc * P(len > k),
          never below one sequence, until the expected longest response of the whole step.
logprob   forward passes over prompt + response on the training layout at the training MFU.
train     training FLOPs / (GPUs * peak * MFU) * (1 + (PP-1)/(m*VPP)) + tensor-parallel traffic
          (per layer and pass, two all-reduce equivalents of the hidden states, 2(t-1)/t * 2h bytes
          per token each, over NVLink, not overlapped) + DP gradient reduction per optimizer step
          (ring; reduce-scatter + all-gather with the distributed optimizer).
sync      per-stage senders (weights/sync.py): each stage's sender gathers its TP shards (NVLink) and sends
          its stage, bf16, once (a broadcast reaches every engine); every engine GPU receives the whole model
          (full tensors; it slices its TP share). Stages send in parallel, so one engine GPU's receive of the
          whole model bounds it after the gather: NVLink when colocated inside a node (CUDA IPC), the
          inter-node fabric otherwise; plus a fixed cost per sync.
offload   colocated only: training state to host and back (when configured).
profile   k samples for every dataset prompt, once, divided over the run's steps.
overlap   asynchronous (max_staleness >= 1) on engines of their own: the next step's rollout runs while this one
          computes log-probs and trains, so the step takes max(rollout, logprob + train) + sync + profile;
          colocated engines share the GPUs and cannot overlap (the trainer's config refuses it).
Pipeline point-to-point and context-parallel KV exchange are left inside the MFU assumption.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from megatron_sgpo.model.flops import ModelShape, decode_flops_per_token, mfu_forward_flops, mfu_training_flops
from megatron_sgpo.platform.layout import ParallelLayout

from .layouts import EngineLayout, Placement, TrainSetup
from .lengths import LengthDist
from .memory import BYTES_PARAM, StageMemory, kv_bytes_per_token
from .spec import ClusterSpec, WorkloadSpec

DRAIN_POINTS = 256


@dataclass(frozen=True)
class StepTime:
    rollout: float
    logprob: float
    train: float
    sync: float
    offload: float
    profile: float
    overlapped: bool = False  # asynchronous: rollout alongside logprob + train

    @property
    def total(self) -> float:
        compute = self.logprob + self.train + self.offload
        busy = max(self.rollout, compute) if self.overlapped else self.rollout + compute
        return busy + self.sync + self.profile

    def as_dict(self) -> dict:
        d = asdict(self)
        d["total"] = self.total
        return d


def decode_step_seconds(model: ModelShape, cl: ClusterSpec, engine_tp: int, active: np.ndarray,
                        context: np.ndarray) -> np.ndarray:
    """One decode iteration of one engine with `active` sequences at `context` tokens."""
    eff = cl.rollout_efficiency
    weights = BYTES_PARAM * model.total_params() / engine_tp
    kv = kv_bytes_per_token(model, engine_tp)
    t_mem = (weights + active * context * kv) / (cl.hbm_GBps * 1e9 * eff)
    flops = active * decode_flops_per_token(model, context) / engine_tp
    t_cmp = flops / (cl.peak_bf16_tflops * 1e12 * eff)
    t_comm = 2 * model.layers * cl.collective_latency_us * 1e-6 if engine_tp > 1 else 0.0
    return np.maximum(t_mem, t_cmp) + t_comm


def rollout_seconds(model: ModelShape, cl: ClusterSpec, eng: EngineLayout, n_seqs: int,
                    n_prompts: int, prompt_len: int, dist: LengthDist, kv_tokens: float) -> float:
    """Prefill + decode time of n_seqs responses spread evenly over the engines."""
    per_engine = n_seqs / eng.engines
    mean = dist.truncated_mean
    conc = max(1.0, min(per_engine, kv_tokens / (prompt_len + mean)))
    prefill_tokens = n_prompts * prompt_len / eng.engines
    prefill_flops = prefill_tokens * mfu_forward_flops(model, 1.0) + 4.0 * model.layers * (
        n_prompts / eng.engines) * prompt_len**2 * model.d_attn
    prefill = prefill_flops / (eng.tp * cl.peak_bf16_tflops * 1e12 * cl.rollout_efficiency)
    full = 0.0
    if per_engine > conc:
        steps = (per_engine - conc) * mean / conc
        full = steps * float(decode_step_seconds(model, cl, eng.tp, np.array(conc),
                                                 np.array(prompt_len + mean / 2)))
    longest = dist.expected_max(n_seqs)
    k = np.linspace(0.0, longest, DRAIN_POINTS + 1)
    mid = (k[:-1] + k[1:]) / 2
    active = np.maximum(conc * dist.sf(mid), 1.0)
    drain = float(np.sum(decode_step_seconds(model, cl, eng.tp, active, prompt_len + mid)
                         * np.diff(k)))
    return prefill + full + drain


def sequence_moments(prompt_len: int, dist: LengthDist) -> tuple[float, float]:
    """E[s] and E[s^2] of prompt + response."""
    m1, m2 = dist.truncated_mean, dist.truncated_second_moment
    return prompt_len + m1, prompt_len**2 + 2 * prompt_len * m1 + m2


def num_microbatches(w: WorkloadSpec, setup: TrainSetup, n_seqs: int) -> int:
    """Micro-batches per DP rank per optimizer step."""
    gbs = w.train_global_batch or n_seqs
    return max(1, gbs // (setup.layout.dp * setup.micro_batch_size))


def bubble_fraction(lay: ParallelLayout, m: int) -> float:
    return (lay.pp - 1) / (m * (lay.vpp or 1))


def dp_comm_seconds(cl: ClusterSpec, setup: TrainSetup, params_per_gpu: float) -> float:
    """Gradient reduction of one optimizer step over the DP x CP group (ring)."""
    lay = setup.layout
    group = lay.dp * lay.cp
    if group == 1:
        return 0.0
    frac = (group - 1) / group
    bytes_moved = frac * params_per_gpu * (4.0 + 2.0 if setup.distributed_optimizer else 2 * 4.0)
    inside = lay.tp * lay.cp * lay.dp <= cl.gpus_per_node
    bw = (cl.nvlink_GBps if inside else cl.internode_GBps) * 1e9
    return bytes_moved / bw


def tp_comm_seconds(model: ModelShape, cl: ClusterSpec, lay: ParallelLayout, tokens: float,
                    passes: float) -> float:
    """TP collectives of `passes` passes over `tokens` tokens, for one GPU's share of them."""
    if lay.tp == 1:
        return 0.0
    per_token_layer = 2 * 2 * (lay.tp - 1) / lay.tp * 2.0 * model.hidden
    tokens_here = tokens / (lay.dp * lay.cp)
    return passes * per_token_layer * (model.layers / lay.pp) * tokens_here / (cl.nvlink_GBps * 1e9)


def train_gpus(cl: ClusterSpec, place: Placement) -> int:
    return cl.world if place.colocated else place.train_nodes * cl.gpus_per_node


def step_time(model: ModelShape, cl: ClusterSpec, w: WorkloadSpec, setup: TrainSetup,
              eng: EngineLayout, place: Placement, mem: StageMemory, dist: LengthDist,
              n_seqs: int, kv_tokens: float, rollout_s: float | None = None,
              profile_s: float | None = None) -> StepTime:
    """All phases of one step; rollout_s/profile_s may be passed in (they do not depend on setup)."""
    if rollout_s is None:
        rollout_s = rollout_seconds(model, cl, eng, n_seqs, w.prompts_per_step, w.prompt_len,
                                    dist, kv_tokens)
    if profile_s is None:
        profile_s = profile_seconds(model, cl, w, eng, dist, kv_tokens)
    gpus = train_gpus(cl, place)
    peak = (cl.peak_fp8_tflops if w.fp8_training else cl.peak_bf16_tflops) * 1e12
    s1, s2 = sequence_moments(w.prompt_len, dist)
    lay = setup.layout
    m = num_microbatches(w, setup, n_seqs)
    bubble = 1.0 + bubble_fraction(lay, m)
    tokens = n_seqs * s1
    fwd = n_seqs * mfu_forward_flops(model, s1, s2)
    logprob = w.logprob_passes * (fwd / (gpus * cl.peak_bf16_tflops * 1e12 * cl.train_mfu) * bubble
                                  + tp_comm_seconds(model, cl, lay, tokens, 1))
    flops = n_seqs * mfu_training_flops(model, s1, setup.recompute, s2)
    opt_steps = math.ceil(n_seqs / (w.train_global_batch or n_seqs))
    tp_passes = 3 if setup.recompute == "full" else 2
    train = (flops / (gpus * peak * cl.train_mfu) * bubble
             + tp_comm_seconds(model, cl, lay, tokens, tp_passes)
             + opt_steps * dp_comm_seconds(cl, setup, mem.params))
    sync = sync_seconds(model, cl, lay, place.colocated)
    if place.colocated:
        offload = 2 * mem.static / (cl.host_GBps * 1e9) if w.offload_training_when_colocated else 0.0
    else:
        offload = 0.0
    return StepTime(rollout=rollout_s, logprob=logprob, train=train, sync=sync, offload=offload,
                    profile=profile_s, overlapped=w.max_staleness > 0 and not place.colocated)


def sync_seconds(model: ModelShape, cl: ClusterSpec, lay: ParallelLayout, colocated: bool) -> float:
    """One weight sync over the per-stage senders (see the module docstring)."""
    full = BYTES_PARAM * model.total_params()
    stage = full / lay.pp
    gather = (lay.tp - 1) / lay.tp * stage / (cl.nvlink_GBps * 1e9)
    inside = colocated and lay.tp * lay.pp * lay.cp <= cl.gpus_per_node
    bw = (cl.nvlink_GBps if inside else cl.internode_GBps) * 1e9
    return gather + full / bw + cl.sync_fixed_s


def profile_seconds(model: ModelShape, cl: ClusterSpec, w: WorkloadSpec, eng: EngineLayout,
                    dist: LengthDist, kv_tokens: float) -> float:
    """Profiling k samples of every dataset prompt, amortised over the run's steps."""
    if not w.dataset_size or not w.profile_k:
        return 0.0
    total = rollout_seconds(model, cl, eng, w.dataset_size * w.profile_k, w.dataset_size,
                            w.prompt_len, dist, kv_tokens)
    return total / max(w.steps, 1)

