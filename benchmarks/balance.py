"""How evenly the DP batcher spreads one sGPO step's compute, against two common baselines.

For sGPO-shaped steps (per-prompt success rate p ~ Beta(a, b), group size
n = clamp(ceil(1/p), 2, 64), log-normal prompt and response lengths with a long tail,
capped at --max-len) it reports, per DP size and micro-batch mode, max/mean rank cost
(estimated training FLOPs including padding, ``BatchPlan.imbalance``) for:

* sgpo      ``make_batches``; ``groups`` is the same with ``keep_groups_together=True``;
* rr        round-robin: sample i to rank i mod DP, in rollout order;
* kk-eq     Karmarkar–Karp with equal sample counts per rank (the approach verl takes),
            weighted by the same FLOPs estimate; ``kk-eq-tok`` weights by token count, as
            verl does. Written here from the idea, not from verl's code.

All three get their micro-batches from the same packer, so only the rank assignment
differs. ``slowdown`` is the baseline's largest rank cost over sgpo's: the step time ratio.
It also times ``make_batches`` on one 100k-sample step into 64 ranks.

    python benchmarks/balance.py [--seed 0] [--steps 5] [--json]
"""
from __future__ import annotations

import argparse
import heapq
import itertools
import json
import time

import numpy as np

from megatron_sgpo.batch import CostModel, make_batches, pad_length, plan_from_assignment
from megatron_sgpo.model.flops import ModelShape
from megatron_sgpo.platform.layout import ParallelLayout

LLAMA_8B = dict(hidden=4096, layers=32, heads=32, head_dim=128, ffn=14336, vocab=128256, kv_heads=8)


def sgpo_step(rng, n_prompts, beta_a, beta_b, max_len):
    """Lengths (prompt + response) and group ids of one step, groups in rollout order."""
    p = rng.beta(beta_a, beta_b, n_prompts)
    sizes = np.clip(np.ceil(1.0 / np.maximum(p, 1e-6)), 2, 64).astype(np.int64)
    group_ids = np.repeat(np.arange(n_prompts), sizes)
    prompt = np.clip(rng.lognormal(5.5, 0.6, n_prompts), 16, max_len // 4).astype(np.int64)
    response = np.clip(rng.lognormal(6.5, 1.0, len(group_ids)), 1, max_len - max_len // 4).astype(np.int64)
    return prompt[group_ids] + response, group_ids


def equal_size_kk(weights, k):
    """Largest differencing into k subsets of equal size (+-1): items are taken k at a time,
    heaviest first, each k-tuple seeding one partial partition with one item per subset, so
    every merge keeps the counts equal."""
    order = np.argsort(-weights, kind="stable")
    pad = (-len(order)) % k
    order = np.concatenate((order, np.full(pad, -1)))  # -1: zero-weight filler
    w = np.concatenate((weights, [0.0]))
    tie = itertools.count()
    heap = []
    for row in order.reshape(-1, k):
        sums = w[row]
        heap.append((-(sums[0] - sums[-1]), next(tie), sums, [[int(i)] for i in row]))
    heapq.heapify(heap)
    while len(heap) > 1:
        _, _, sa, ua = heapq.heappop(heap)
        _, _, sb, ub = heapq.heappop(heap)
        sums = sa + sb[::-1]
        subsets = [ua[j] + ub[k - 1 - j] for j in range(k)]
        o = np.argsort(-sums, kind="stable")
        heapq.heappush(heap, (-(sums[o[0]] - sums[o[-1]]), next(tie), sums[o], [subsets[j] for j in o]))
    assign = np.empty(len(weights), dtype=np.int64)
    for rank, members in enumerate(heap[0][3]):
        members = [i for i in members if i >= 0]
        assign[members] = rank
    return assign


def compare(args):
    cost = CostModel.from_shape(ModelShape(**LLAMA_8B))
    rows = []
    for dp in (2, 8, 64):
        for mode in ("padded", "packed"):
            rng = np.random.default_rng(args.seed)
            acc = {name: [] for name in ("sgpo", "groups", "rr", "kk-eq", "kk-eq-tok")}
            peaks = {name: [] for name in acc}
            samples, micro = [], []
            for _ in range(args.steps):
                lengths, groups = sgpo_step(rng, args.prompts, args.beta_a, args.beta_b, args.max_len)
                layout = ParallelLayout(dp=dp)
                padded = pad_length(lengths, layout)
                plans = {
                    "sgpo": make_batches(lengths, groups, layout, args.budget, cost, mode=mode),
                    "groups": make_batches(lengths, groups, layout, args.budget, cost, mode, keep_groups_together=True),
                }
                for name, assign in (
                    ("rr", np.arange(len(lengths)) % dp),
                    ("kk-eq", equal_size_kk(cost(padded), dp)),
                    ("kk-eq-tok", equal_size_kk(padded.astype(np.float64), dp)),
                ):
                    plans[name] = plan_from_assignment(assign, padded, layout, args.budget, cost, mode)
                for name, plan in plans.items():
                    acc[name].append(plan.imbalance())
                    peaks[name].append(plan.rank_costs().max())
                samples.append(len(lengths))
                micro.append(plans["sgpo"].num_micro_batches)
            row = dict(dp=dp, mode=mode, samples=float(np.mean(samples)), micro_batches=float(np.mean(micro)))
            for name in acc:
                row[f"{name}_imbalance_mean"] = float(np.mean(acc[name]))
                row[f"{name}_imbalance_max"] = float(np.max(acc[name]))
                if name != "sgpo":
                    row[f"{name}_slowdown"] = float(np.mean(np.array(peaks[name]) / np.array(peaks["sgpo"])))
            rows.append(row)
    return rows


def time_large(args):
    cost = CostModel.from_shape(ModelShape(**LLAMA_8B))
    rng = np.random.default_rng(args.seed + 1)
    prompts = 1
    lengths, groups = sgpo_step(rng, 1, args.beta_a, args.beta_b, args.max_len)
    while len(lengths) < 100_000:  # grow the step until it holds 100k samples
        prompts = int(prompts * 100_000 / len(lengths) * 1.05) + 1
        lengths, groups = sgpo_step(np.random.default_rng(args.seed + 1), prompts, args.beta_a, args.beta_b, args.max_len)
    lengths, groups = lengths[:100_000], groups[:100_000]
    out = {}
    for mode in ("padded", "packed"):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            plan = make_batches(lengths, groups, ParallelLayout(dp=64), args.budget, cost, mode=mode)
            times.append(time.perf_counter() - start)
        out[mode] = dict(samples=len(lengths), seconds_best=min(times), seconds_median=float(np.median(times)),
                         imbalance=plan.imbalance(), micro_batches=plan.num_micro_batches)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=5, help="steps per configuration")
    parser.add_argument("--prompts", type=int, default=512, help="prompts per step")
    parser.add_argument("--beta-a", type=float, default=1.0)
    parser.add_argument("--beta-b", type=float, default=2.0)
    parser.add_argument("--max-len", type=int, default=8192)
    parser.add_argument("--budget", type=int, default=16384, help="max tokens per micro-batch")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    rows, timing = compare(args), time_large(args)
    if args.json:
        print(json.dumps(dict(args=vars(args), rows=rows, timing_dp64_100k=timing), indent=2))
        return
    print(f"max/mean rank cost (Llama-3-8B FLOPs incl. padding), mean [max] over {args.steps} steps of "
          f"{args.prompts} prompts, budget {args.budget} tokens/micro-batch, seed {args.seed}")
    head = (f"{'DP':>3} {'mode':<7}{'samples':>8}{'mb':>5} {'sgpo':>15} {'sgpo groups':>15} {'round-robin':>15} "
            f"{'kk-eq':>15} {'kk-eq-tok':>15}   slowdown vs sgpo: groups / rr / kk-eq / kk-eq-tok")
    print(head)
    for r in rows:
        cells = [f"{r[n + '_imbalance_mean']:.4f} [{r[n + '_imbalance_max']:.4f}]" for n in ("sgpo", "groups", "rr", "kk-eq", "kk-eq-tok")]
        slow = " / ".join(f"{r[n + '_slowdown']:.3f}x" for n in ("groups", "rr", "kk-eq", "kk-eq-tok"))
        print(f"{r['dp']:>3} {r['mode']:<7}{r['samples']:>8.0f}{r['micro_batches']:>5.0f} " + " ".join(f"{c:>15}" for c in cells) + f"   {slow}")
    for mode, t in timing.items():
        print(f"make_batches, {t['samples']} samples -> 64 ranks, {mode}: best {t['seconds_best']*1e3:.0f} ms, "
              f"median {t['seconds_median']*1e3:.0f} ms of 3 (imbalance {t['imbalance']:.4f}, {t['micro_batches']} micro-batches/rank)")


if __name__ == "__main__":
    main()
