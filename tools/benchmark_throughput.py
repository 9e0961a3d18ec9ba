"""Throughput of the RL step's phases for one model and parallel layout, on the device present.

Single process, or several ranks (gloo on CPU, NCCL on GPU):
    python tools/benchmark_throughput.py --json runs/bench/tp1.json
    torchrun --nproc-per-node 2 tools/benchmark_throughput.py --tp 2 --json runs/bench/tp2.json
    python tools/benchmark_throughput.py --compare runs/bench/tp1.json runs/bench/tp2.json
The model is an HF folder (``--model DIR``), a ``--config-json`` (random init), or a Llama defined by
``--hidden --layers --heads --kv-heads --ffn --vocab`` (random init). Rank 0 prints; see
docs/benchmarks.md for what each figure means and measured results.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    m = p.add_argument_group("model (one of)")
    m.add_argument("--model", default="", help="HF folder: its config, weights (policy and engine), tokenizer")
    m.add_argument("--config-json", default="", help="HF config.json of a random-init model")
    for flag, default in (("hidden", 384), ("layers", 6), ("heads", 6), ("kv-heads", 2), ("ffn", 1024),
                          ("vocab", 8192)):
        m.add_argument(f"--{flag}", type=int, default=default, help=f"random-init Llama (default {default})")
    lay = p.add_argument_group("layout")
    lay.add_argument("--tp", type=int, default=1)
    lay.add_argument("--pp", type=int, default=1)
    lay.add_argument("--fp8", action="store_true", help="FP8 e4m3 training (GPU with Transformer Engine)")
    wl = p.add_argument_group("workload")
    wl.add_argument("--batch", type=int, default=16, help="sequences per training step (global over DP)")
    wl.add_argument("--prompt-len", type=int, default=64)
    wl.add_argument("--response-len", type=int, default=192, help="also max_new_tokens of the rollout")
    wl.add_argument("--micro-batch", type=int, default=4, help="sequences per micro-batch")
    wl.add_argument("--rollout-prompts", type=int, default=8)
    wl.add_argument("--rollout-n", type=int, default=2, help="samples per rollout prompt")
    wl.add_argument("--rollout-new-tokens", type=int, default=None,
                    help="rollout max_new_tokens (default: --response-len)")
    r = p.add_argument_group("measurement")
    r.add_argument("--warmup", type=int, default=1)
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--bucket-mb", type=int, default=256, help="weight-sync bucket size")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=0, help="CPU threads per rank (default: cores / local ranks)")
    r.add_argument("--engine-url", default="", help="measure rollout on this SGLang-protocol server instead")
    r.add_argument("--skip-rollout", action="store_true")
    r.add_argument("--skip-sync", action="store_true")
    r.add_argument("--skip-train", action="store_true", help="no training or log-prob phase (rollout/sync only)")
    p.add_argument("--json", default="", help="write the report here ('-' for stdout)")
    p.add_argument("--compare", nargs=2, metavar=("BASE", "OTHER"), help="print OTHER/BASE ratios of two reports")
    a = p.parse_args(argv)
    if a.model and a.config_json:
        p.error("give --model or --config-json, not both")
    if a.warmup < 0 or a.reps < 1:
        p.error("--warmup must be >= 0 and --reps >= 1")
    return a


def hf_config_of(a) -> dict:
    from megatron_sgpo.bench.throughput import llama_config
    from megatron_sgpo.model.hf_config import load_hf_config

    if a.model:
        return load_hf_config(a.model)
    if a.config_json:
        return load_hf_config(a.config_json)
    return llama_config(a.hidden, a.layers, a.heads, a.kv_heads, a.ffn, a.vocab,
                        max_positions=max(4096, a.prompt_len + a.response_len))


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rep: dict) -> str:
    """The human-readable summary rank 0 prints."""
    m = rep["model"]
    lines = [f"{rep['device_name']} | world {rep['world_size']} = TP{rep['tp']} x PP{rep['pp']} x DP{rep['dp']} | "
             f"{rep['precision']} | {rep['threads_per_rank']} thread(s)/rank | {m['params'] / 1e6:.1f}M params "
             f"(h{m['hidden']} L{m['layers']} a{m['heads']}/{m['kv_heads']} ffn{m['ffn']} V{m['vocab']})",
             f"workload: {rep['workload']['batch']} x ({rep['workload']['prompt_len']} + "
             f"{rep['workload']['response_len']}) tokens, micro-batch {rep['workload']['micro_batch']}; "
             f"median of {rep['reps']} after {rep['warmup']} warm-up",
             f"{'phase':<9} {'tokens/s':>10} {'TFLOP/s':>9} {'TFLOP/s/dev':>11} {'MFU':>6} {'median s':>9} "
             f"{'best tok/s':>10} {'peak GiB':>8}"]
    for phase in ("train", "logprob", "rollout"):
        if phase in rep:
            x = rep[phase]
            lines.append(f"{phase:<9} {x['tokens_per_s']:>10.0f} {_fmt(x.get('tflops_total'), '.4g'):>9} "
                         f"{_fmt(x.get('tflops_per_device'), '.4g'):>11} {_fmt(x.get('mfu'), '.1%'):>6} "
                         f"{x['seconds_median']:>9.3f} {x['tokens_per_s_best']:>10.0f} "
                         f"{_fmt(x.get('peak_memory_gib'), '.2f'):>8}")
    plan = rep["planner_train_memory_gib"]
    if rep["device"] == "cuda":  # the planner models bf16 training on GPUs
        lines.append(f"planner: training needs {plan['total']:.2f} GiB/GPU (weights {plan['weights']:.2f}, grads "
                     f"{plan['grads']:.2f}, optimizer {plan['optimizer']:.2f}, activations {plan['activations']:.2f}, "
                     f"logits {plan['logits']:.2f})")
    if "sync" in rep:
        s = rep["sync"]
        lines.append(f"sync      {s['bytes'] / 1e6:.1f} MB in {s['tensors']} tensors, {s['buckets']} bucket(s): "
                     f"{s['GBps']:.3f} GB/s; plain copy {s['copy_GBps']:.3f} GB/s; ratio {s['ratio_to_copy']:.3f} "
                     f"(best: {s['GBps_best']:.3f} vs {s['copy_GBps_best']:.3f} GB/s)")
    return "\n".join(lines)


def compare(base: dict, other: dict) -> dict:
    """OTHER/BASE ratios of the headline figures (higher is better for every one)."""
    out = {}
    for phase, key in (("train", "tokens_per_s"), ("train", "tokens_per_s_best"), ("logprob", "tokens_per_s"),
                       ("logprob", "tokens_per_s_best"), ("rollout", "tokens_per_s"), ("rollout", "tokens_per_s_best"),
                       ("sync", "GBps"), ("sync", "GBps_best"), ("sync", "ratio_to_copy")):
        if key in base.get(phase, {}) and key in other.get(phase, {}):
            out[f"{phase}.{key}"] = other[phase][key] / base[phase][key]
    return out


def main(argv=None) -> int:
    a = parse(argv)
    if a.compare:
        base, other = (json.load(open(f)) for f in a.compare)
        label = lambda r: f"TP{r['tp']}/PP{r['pp']}/DP{r['dp']}"  # noqa: E731
        ratios = compare(base, other)
        print(f"{label(other)} / {label(base)}:")
        for key, value in ratios.items():
            print(f"  {key:<22} {value:.3f}")
        if a.json:
            text = json.dumps(ratios, indent=2)
            print(text) if a.json == "-" else open(a.json, "w").write(text + "\n")
        return 0

    import torch

    if not torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(a.threads or max(1, (os.cpu_count() or 1) // local))
    from megatron_sgpo.bench.throughput import BenchArgs, Workload, measure, save_random_hf
    from megatron_sgpo.platform.dist import destroy_parallel

    cfg = hf_config_of(a)
    w = Workload(a.batch, a.prompt_len, a.response_len, a.micro_batch, a.rollout_prompts, a.rollout_n,
                 a.rollout_new_tokens)
    args = BenchArgs(a.tp, a.pp, a.fp8, a.warmup, a.reps, a.bucket_mb, a.seed, a.engine_url,
                     a.skip_rollout, a.skip_sync, a.skip_train)
    rank = int(os.environ.get("RANK", "0"))
    tmp = None
    model_dir = a.model or None
    needs_engine = not a.skip_sync or (not a.skip_rollout and not a.engine_url)
    if model_dir is None and rank == 0 and needs_engine:
        tmp = tempfile.mkdtemp(prefix="bench-hf-")
        model_dir = save_random_hf(cfg, tmp)
    try:
        rep = measure(cfg, model_dir, w, args, load_weights=bool(a.model))
    finally:
        destroy_parallel()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if rep is not None:
        rep["model"]["source"] = a.model or a.config_json or "flags (random init)"
        print(table(rep), flush=True)
        if a.json == "-":
            print(json.dumps(rep, indent=2))
        elif a.json:
            os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
            with open(a.json, "w") as f:
                json.dump(rep, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
