"""Per-GPU memory of a Megatron training layout and of an SGLang engine, and of the two colocated.

Training (per GPU of the heaviest pipeline stage):
  weights  2 B/param (bf16) + main grads 4 B/param (fp32, Megatron DDP)
  optimizer 12 B/param (fp32 master + Adam m, v), divided by DP*CP with the distributed optimizer
  params of a stage = L/PP layers (+ embedding on the first, + output layer and final norm on the
  last), divided by TP.
  activations, Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
  Models"), bytes per layer per micro-batch with s = seq/CP, b = micro-batch, a = heads:
    no recompute, SP:     s b h (34 + 5 a s / h) / t
    no recompute, no SP:  s b h (10 + 24/t + 5 a s / (h t))
    selective, SP:        34 s b h / t           (no SP: s b h (10 + 24/t))
    full:                 2 s b h / t per layer stored (SP) + one layer's full set while replaying
  times the micro-batches in flight: min(PP, m) on the first stage in 1F1B, times
  (1 + (PP-1)/(PP*VPP)) when interleaved; the last stage holds one micro-batch plus fp32 logits
  and their gradient (2 x 4 s b V / t bytes).
  The formula is the paper's (MHA, 4h MLP); GQA and SwiGLU change the constant 34 by a few units,
  which the workspace constant absorbs. With fused (flash) attention, the default, the 5as/h term
  is dropped: no s x s matrix is stored, so "none" and "selective" need the same memory.

Engine (SGLang): bf16 weights / engine TP; mem_fraction x GPU memory holds weights + KV pool;
KV bytes per token per GPU = 2 (K,V) * layers * max(kv_heads/TP, 1) * head_dim * 2 bytes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from megatron_sgpo.model.flops import ModelShape
from megatron_sgpo.platform.layout import ParallelLayout

from .layouts import EngineLayout, TrainSetup
from .spec import GIB

BYTES_PARAM = 2.0  # bf16 weights
BYTES_GRAD = 4.0  # fp32 main grads
BYTES_ADAM = 12.0  # fp32 master + 2 moments


@dataclass(frozen=True)
class StageMemory:
    stage: str
    params: float  # parameters held by one GPU of this stage (count)
    weights: float  # bytes
    grads: float
    optimizer: float
    activations: float
    logits: float
    workspace: float

    @property
    def static(self) -> float:
        return self.weights + self.grads + self.optimizer

    @property
    def total(self) -> float:
        return self.static + self.activations + self.logits + self.workspace

    def as_gib(self) -> dict:
        d = {k: (v / GIB if k not in ("stage", "params") else v) for k, v in asdict(self).items()}
        d["total"] = self.total / GIB
        return d


def activation_bytes_per_layer(s: float, b: int, h: int, a: int, t: int, sequence_parallel: bool,
                               recompute: str, flash_attention: bool = False) -> float:
    """Bytes one transformer layer keeps for one micro-batch (Korthikanti et al. 2022).

    flash_attention: the fused kernel keeps no s x s scores, softmax or dropout mask, so the
    5as/h term goes, exactly as selective recompute removes it.
    """
    sbh = s * b * h
    attn = 0.0 if flash_attention else 5.0 * a * s / h
    if recompute == "full":
        return 2.0 * sbh / (t if sequence_parallel else 1)
    if sequence_parallel or t == 1:
        base = 34.0 / t
    else:
        base = 10.0 + 24.0 / t
    if recompute == "selective":
        return sbh * base
    return sbh * (base + attn / t)


def in_flight_microbatches(pp: int, vpp: int, num_microbatches: int) -> float:
    """Micro-batches whose activations the first stage holds at the 1F1B peak."""
    inflight = min(pp, max(num_microbatches, 1))
    if vpp > 1:
        inflight *= 1.0 + (pp - 1) / (pp * vpp)
    return inflight


def stage_params(model: ModelShape, lay: ParallelLayout, stage: str) -> float:
    """Parameters one GPU of `stage` ('first' or 'last') holds."""
    n = model.layers // lay.pp * model.layer_params
    first, last = stage == "first" or lay.pp == 1, stage == "last" or lay.pp == 1
    if first:
        n += model.embedding_params(lay.tp)
    if last:
        out = model.output_params(lay.tp)
        if out == 0 and lay.pp > 1:  # tied: the last stage keeps its own copy of the embedding
            out = model.embedding_params(lay.tp)
        n += out + model.hidden
    return n / lay.tp


def stage_memory(model: ModelShape, setup: TrainSetup, seq_len: int, num_microbatches: int,
                 workspace_bytes: float, stage: str, flash_attention: bool = False) -> StageMemory:
    lay = setup.layout
    params = stage_params(model, lay, stage)
    opt_shards = lay.dp * lay.cp if setup.distributed_optimizer else 1
    s = seq_len / lay.cp
    b, h, t = setup.micro_batch_size, model.hidden, lay.tp
    per_layer = activation_bytes_per_layer(s, b, h, model.heads, t, lay.sequence_parallel,
                                           setup.recompute, flash_attention)
    layers_here = model.layers // lay.pp
    if stage == "first" or lay.pp == 1:
        inflight = in_flight_microbatches(lay.pp, lay.vpp or 1, num_microbatches)
    else:
        inflight = 1.0
    acts = per_layer * layers_here * inflight
    if setup.recompute == "full":  # the layer being replayed holds its full activations
        acts += activation_bytes_per_layer(s, b, h, model.heads, t, lay.sequence_parallel, "none",
                                           flash_attention)
    logits = 0.0
    if stage == "last" or lay.pp == 1:
        logits = 2 * 4.0 * s * b * model.padded_vocab(t) / t
    return StageMemory(stage=stage, params=params, weights=params * BYTES_PARAM,
                       grads=params * BYTES_GRAD, optimizer=params * BYTES_ADAM / opt_shards,
                       activations=acts, logits=logits, workspace=workspace_bytes)


def train_memory(model: ModelShape, setup: TrainSetup, seq_len: int, num_microbatches: int,
                 workspace_bytes: float, flash_attention: bool = False) -> StageMemory:
    """Memory of the heaviest stage (first or last) of the layout, per GPU."""
    args = (model, setup, seq_len, num_microbatches, workspace_bytes)
    stages = [stage_memory(*args, "first", flash_attention)]
    if setup.layout.pp > 1:
        stages.append(stage_memory(*args, "last", flash_attention))
    return max(stages, key=lambda m: m.total)


@dataclass(frozen=True)
class EngineMemory:
    weights: float  # bytes per GPU
    kv_bytes_per_token: float  # per GPU
    kv_pool: float  # bytes per GPU
    kv_tokens: float  # tokens one engine can hold
    peak: float  # bytes per GPU while generating

    def as_gib(self) -> dict:
        return {"weights": self.weights / GIB, "kv_pool": self.kv_pool / GIB,
                "kv_tokens": self.kv_tokens, "kv_bytes_per_token": self.kv_bytes_per_token,
                "peak": self.peak / GIB}


def kv_bytes_per_token(model: ModelShape, engine_tp: int) -> float:
    """K and V, every layer, bf16, this GPU's share of the KV heads (replicated if TP > kv_heads)."""
    heads_here = max(model.kv_heads / engine_tp, 1.0)
    return 2.0 * model.layers * heads_here * model.head_dim * 2.0


def engine_memory(model: ModelShape, eng: EngineLayout, gpu_bytes: float, mem_fraction: float,
                  engine_workspace_bytes: float) -> EngineMemory:
    weights = BYTES_PARAM * model.total_params() / eng.tp
    per_tok = kv_bytes_per_token(model, eng.tp)
    pool = mem_fraction * gpu_bytes - weights
    return EngineMemory(weights=weights, kv_bytes_per_token=per_tok, kv_pool=pool,
                        kv_tokens=max(pool, 0.0) / per_tok,
                        peak=mem_fraction * gpu_bytes + engine_workspace_bytes)


def colocated_peak(train: StageMemory, engine: EngineMemory, offload_training: bool,
                   engine_residual_bytes: float) -> tuple[float, str]:
    """Peak per GPU when training and engine share it, and which phase sets it.

    Assumption: the engine releases weights and KV cache during training
    (/release_memory_occupation) and keeps `engine_residual` (context, CUDA graphs); during
    rollout the training process keeps its workspace, plus its weights, grads and optimizer
    state unless they are offloaded to host memory.
    """
    train_phase = train.total + engine_residual_bytes
    kept = train.workspace + (0.0 if offload_training else train.static)
    rollout_phase = engine.peak + kept
    if train_phase >= rollout_phase:
        return train_phase, "train"
    return rollout_phase, "rollout"
