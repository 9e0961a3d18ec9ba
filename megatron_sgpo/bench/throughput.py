"""Measure one RL step's phases on whatever device is present: train, log-probs, weight sync, rollout.

Every figure is a median over repetitions after warm-up, and every FLOP count comes from
:mod:`megatron_sgpo.model.flops` (the ledger's convention) so the benchmark and the run's compute ledger
agree by construction.
Weight sync is also compared with a plain copy of the same tensors, which is the floor any sync
transport is measured against.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from megatron_sgpo.model.flops import ModelShape, inference_flops, logprob_flops, training_flops

# Dense (no sparsity) peak TFLOP/s from NVIDIA's H100 SXM / H200 datasheets; H200 has the H100's compute.
_HOPPER_SXM_PEAK = {"bf16": 989.0, "fp8": 1979.0}


def peak_tflops(device_name: str, precision: str) -> float | None:
    """Datasheet peak for MFU, or None when the device is not one we have a number for (CPU included).

    ``torch.cuda.get_device_name`` reports the SXM H100 as "NVIDIA H100 80GB HBM3"; PCIe and NVL parts
    have lower peaks and are deliberately not matched.
    """
    name = device_name.upper()
    hopper_sxm = "H200" in name or ("H100" in name and ("HBM3" in name or "SXM" in name))
    return _HOPPER_SXM_PEAK.get(precision) if hopper_sxm else None


def llama_config(hidden: int, layers: int, heads: int, kv_heads: int, ffn: int, vocab: int,
                 max_positions: int = 4096) -> dict:
    """A Llama ``config.json`` dict for a random-init model; no EOS, so rollouts run to full length."""
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"hidden={hidden} must divide by heads={heads}, and heads by kv_heads={kv_heads}")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "vocab_size": vocab, "max_position_embeddings": max_positions,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
        "attention_bias": False, "bos_token_id": None, "eos_token_id": None, "pad_token_id": 0,
    }


def save_random_hf(cfg: dict, path: str, dtype: torch.dtype = torch.float32) -> str:
    """A random-init HF folder of ``cfg`` (for an engine whose weights a sync or a transport overwrites)."""
    import transformers

    rest = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures")}
    config = transformers.AutoConfig.for_model(cfg["model_type"], **rest)
    config.architectures = cfg.get("architectures")
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(path)
    return path


@dataclass(frozen=True)
class Workload:
    """A synthetic RL step: ``batch`` sequences of prompt + response tokens, global over DP."""

    batch: int = 16
    prompt_len: int = 64
    response_len: int = 192
    micro_batch: int = 4
    rollout_prompts: int = 8
    rollout_n: int = 2
    rollout_new_tokens: int | None = None  # max_new_tokens of the rollout; None: response_len

    def __post_init__(self):
        for name, value in asdict(self).items():
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")

    @property
    def rollout_tokens(self) -> int:
        return self.rollout_new_tokens or self.response_len

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.response_len

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len


def step_flops(shape: ModelShape, w: Workload) -> dict:
    """Ledger FLOPs of one training step and one log-prob pass over the whole (global) batch."""
    return {"training": w.batch * training_flops(shape, w.seq_len),
            "logprob": w.batch * logprob_flops(shape, w.seq_len)}


def rates(seconds: list[float], tokens: int, flops: int | None, world: int, peak: float | None) -> dict:
    """Median time → tokens/s, total and per-device TFLOP/s, MFU (only with a known peak).

    The fastest repetition is kept too: on a shared machine it is the better estimate of the cost itself.
    """
    med = statistics.median(seconds)
    out = {"seconds_median": med, "seconds_all": seconds, "tokens": tokens, "tokens_per_s": tokens / med,
           "tokens_per_s_best": tokens / min(seconds)}
    if flops is not None:
        out["flops"] = flops
        out["tflops_total"] = flops / med / 1e12
        out["tflops_per_device"] = out["tflops_total"] / world
        if peak:
            out["mfu"] = out["tflops_per_device"] / peak
    return out


def _sync_device() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    if dist.is_initialized():
        dist.barrier()


def timed(fn, warmup: int, reps: int) -> list[float]:
    """Wall seconds of ``fn`` per repetition, all ranks aligned by a barrier before and after each."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        _sync_device()
        start = time.perf_counter()
        fn()
        _sync_device()
        out.append(time.perf_counter() - start)
    return out


def rank_batches(w: Workload, vocab: int, dp: int, dp_rank: int, seed: int = 0) -> list:
    """This DP rank's share (sequences dp_rank::dp) of a seeded random batch, in micro-batches."""
    from megatron_sgpo.train.step import collate

    gen = torch.Generator().manual_seed(seed)
    seqs = torch.randint(1, vocab, (w.batch, w.seq_len), generator=gen).tolist()
    signs = torch.where(torch.rand(w.batch, generator=gen) < 0.5, -1.0, 1.0)
    mine = list(range(dp_rank, w.batch, dp))
    if not mine:
        raise ValueError(f"batch={w.batch} leaves DP rank {dp_rank} of {dp} without sequences")
    out = []
    for start in range(0, len(mine), w.micro_batch):
        idx = mine[start:start + w.micro_batch]
        mb = collate([seqs[i] for i in idx], [w.prompt_len] * len(idx))
        mb.fields["advantages"] = signs[idx]
        mb.fields["weights"] = torch.ones(len(idx))
        out.append(mb)
    return out


class _Recorder:
    """The engine, remembering the names ``update_weights`` sent (for the copy baseline); every other call
    (the weight-update session, version) goes straight to the engine."""

    def __init__(self, engine):
        self.engine, self.sent = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def update_weights(self, bucket, version):
        self.sent.extend(name for name, _ in bucket)
        self.engine.update_weights(bucket, version=version)


def copy_baseline(dst: list[torch.Tensor], reps: int) -> dict:
    """GB/s of ``d.copy_(s)`` into exactly these tensors from clones of them (same bytes, same device): the
    floor every weight transport is measured against."""
    src = [t.detach().clone() for t in dst]
    nbytes = sum(t.numel() * t.element_size() for t in dst)

    def copy():
        with torch.no_grad():
            for d, s in zip(dst, src):
                d.copy_(s)
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    secs = timed_locally(copy, 1, reps)
    return {"bytes": nbytes, "seconds_median": statistics.median(secs), "GBps": nbytes / statistics.median(secs) / 1e9,
            "GBps_best": nbytes / min(secs) / 1e9}


def with_peak_memory(measure_fn) -> tuple[list[float], float | None]:
    """``measure_fn()``'s timings, and the peak GPU memory it allocated (GiB; None off CUDA)."""
    if not torch.cuda.is_available():
        return measure_fn(), None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    secs = measure_fn()
    return secs, torch.cuda.max_memory_allocated() / 2**30


def planner_train_memory(shape: ModelShape, layout, w: Workload, flash_attention: bool) -> dict:
    """The cluster planner's per-GPU training memory (GiB by component) for this model, layout and workload."""
    from megatron_sgpo.cluster.layouts import TrainSetup
    from megatron_sgpo.cluster.memory import train_memory

    per_rank = -(-w.batch // layout.resolved_dp())
    setup = TrainSetup(layout, recompute="none", distributed_optimizer=False, micro_batch_size=w.micro_batch)
    mem = train_memory(shape, setup, w.seq_len, -(-per_rank // w.micro_batch), 0.0, flash_attention)
    return mem.as_gib()


def timed_locally(fn, warmup: int, reps: int) -> list[float]:
    """Like :func:`timed` for work done by one rank alone (no barriers)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


@dataclass(frozen=True)
class BenchArgs:
    tp: int = 1
    pp: int = 1
    fp8: bool = False
    warmup: int = 1
    reps: int = 3
    bucket_mb: int = 256
    seed: int = 0
    engine_url: str = ""
    skip_rollout: bool = False
    skip_sync: bool = False
    skip_train: bool = False


def measure(hf_config: dict, model_dir: str | None, w: Workload, a: BenchArgs, load_weights: bool) -> dict | None:
    """Run every phase under the current torchrun world; returns the report on rank 0, None elsewhere.

    ``model_dir`` is the HF folder the local engine loads (rank 0 only); ``load_weights`` loads it into
    the policy too (throughput does not depend on the values, but a real model's EOS does).
    """
    from megatron.core import parallel_state

    from megatron_sgpo.algo.loss import LossConfig
    from megatron_sgpo.model.build import ModelOptions, use_transformer_engine
    from megatron_sgpo.model.hf_config import validate_layout
    from megatron_sgpo.model.mapping import WeightMapping
    from megatron_sgpo.platform.dist import device, init_parallel
    from megatron_sgpo.platform.layout import ParallelLayout
    from megatron_sgpo.train.policy import OptimConfig, Policy
    from megatron_sgpo.train.update import attach_old_logprobs, make_loss_fn
    from megatron_sgpo.weights.sync import sync_weights

    layout = ParallelLayout(tp=a.tp, pp=a.pp, fp8="e4m3" if a.fp8 else None)
    validate_layout(hf_config, layout, int(os.environ.get("WORLD_SIZE", "1")))
    dp = init_parallel(layout, seed=a.seed)
    layout = layout.with_world(dist.get_world_size())
    world, rank = dist.get_world_size(), dist.get_rank()
    options = ModelOptions(init_weights=not (load_weights and model_dir))
    if a.fp8 and not use_transformer_engine():
        raise RuntimeError("--fp8 needs Transformer Engine and a CUDA GPU")
    precision = "fp8" if a.fp8 else ("bf16" if options.torch_dtype() == torch.bfloat16 else "fp32")
    dev = device()
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    peak = peak_tflops(dev_name, precision) if dev.type == "cuda" else None

    policy = Policy(hf_config, layout, dp, options, OptimConfig(lr=1e-6))
    if load_weights and model_dir:
        from megatron_sgpo.model.hf_io import HFCheckpoint

        policy.load_hf(HFCheckpoint(model_dir))
    shape = ModelShape.from_hf_config(hf_config)
    flops = step_flops(shape, w)
    mbs = rank_batches(w, hf_config["vocab_size"], dp, parallel_state.get_data_parallel_rank(), a.seed)

    report = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": dev.type, "device_name": dev_name,
        "world_size": world, "tp": a.tp, "pp": a.pp, "dp": dp, "precision": precision, "peak_tflops": peak,
        "threads_per_rank": torch.get_num_threads(),
        "model": {"params": shape.total_params(), "hidden": shape.hidden, "layers": shape.layers,
                  "heads": shape.heads, "kv_heads": shape.kv_heads, "ffn": shape.ffn, "vocab": shape.vocab},
        "workload": {**asdict(w), "seq_len": w.seq_len, "tokens": w.tokens},
        "warmup": a.warmup, "reps": a.reps,
        "planner_train_memory_gib": planner_train_memory(shape, layout, w, use_transformer_engine()),
    }
    if not a.skip_train:
        attach_old_logprobs(policy, mbs)
        loss_fn = make_loss_fn(LossConfig(), float(w.batch * w.response_len))
        phases = {"train": (lambda: policy.train_step(mbs, loss_fn), flops["training"]),
                  "logprob": (lambda: policy.logprobs(mbs), flops["logprob"])}
        for phase, (fn, phase_flops) in phases.items():
            secs, peak_gib = with_peak_memory(lambda: timed(fn, a.warmup, a.reps))
            report[phase] = {**rates(secs, w.tokens, phase_flops, world, peak), "peak_memory_gib": peak_gib}

    engine = None
    if rank == 0 and (not a.skip_sync or (not a.skip_rollout and not a.engine_url)):
        from megatron_sgpo.rollout.local import LocalEngine

        engine = LocalEngine(model_dir)
    if not a.skip_sync:
        mapping = WeightMapping(hf_config, a.tp, options.make_vocab_size_divisible_by)
        target = _Recorder(engine) if engine is not None else None
        dtype = engine.dtype if engine is not None else None
        version = iter(range(1, 10_000))
        stats = {}

        def sync():
            if target is not None:
                target.sent.clear()
            stats.update(sync_weights(policy.modules(), mapping, target, next(version), a.bucket_mb << 20, dtype))

        secs, peak_gib = with_peak_memory(lambda: timed(sync, a.warmup, a.reps))
        if rank == 0:
            med = statistics.median(secs)
            params = dict(engine.model.named_parameters(remove_duplicate=False))
            base = copy_baseline([params[n] for n in dict.fromkeys(target.sent)], a.reps)
            report["sync"] = {**stats, "seconds_median": med, "seconds_all": secs, "GBps": stats["bytes"] / med / 1e9,
                              "GBps_best": stats["bytes"] / min(secs) / 1e9, "copy_GBps_best": base["GBps_best"],
                              "copy_GBps": base["GBps"], "copy_bytes": base["bytes"],
                              "ratio_to_copy": stats["bytes"] / med / 1e9 / base["GBps"], "peak_memory_gib": peak_gib}
    if not a.skip_rollout and rank == 0:
        report["rollout"] = _rollout(engine, a, w, hf_config["vocab_size"], shape)
    if dist.is_initialized():
        dist.barrier()
    return report if rank == 0 else None


def _rollout(engine, a: BenchArgs, w: Workload, vocab: int, shape: ModelShape) -> dict:
    """Sampled generation (temperature 1, seeded) from the local engine or an SGLang-protocol URL."""
    from megatron_sgpo.rollout.engine import SamplingParams

    if a.engine_url:
        from megatron_sgpo.rollout.sglang import SGLangClient

        engine = SGLangClient(a.engine_url)
    gen = torch.Generator().manual_seed(a.seed + 1)
    prompts = torch.randint(1, vocab, (w.rollout_prompts, w.prompt_len), generator=gen).tolist()
    counts = [w.rollout_n] * w.rollout_prompts
    params = SamplingParams(temperature=1.0, max_new_tokens=w.rollout_tokens, seed=a.seed)
    generated: list[int] = []

    def run():
        out = engine.generate(prompts, counts, params)
        generated[:] = [len(c.token_ids) for group in out for c in group]

    secs, peak_gib = with_peak_memory(lambda: timed_locally(run, a.warmup, a.reps))
    tokens = sum(generated)
    flops = sum(inference_flops(shape, w.prompt_len, n) for n in generated)
    out = {**rates(secs, tokens, flops, 1, None), "peak_memory_gib": peak_gib}
    out.update(engine="sglang:" + a.engine_url if a.engine_url else "local", sequences=len(generated))
    return out
