"""Cost of the RL update's options per step, as ratios to the plain update measured in the same run.

One process (gloo world of one), a random-init Llama, one synthetic rollout batch of variable-size groups:
- ``plain``: old log-probs + one optimizer step (the default);
- ``reference``: + the frozen reference's log-prob pass (``loss.kl_coef > 0``);
- ``mini_batches=4``: the batch in 4 PPO mini-batches (4 optimizer steps on a quarter each);
- ``ppo_epochs=2``: every sample trained twice.
Each is timed ``--reps`` times after a warm-up; the table gives medians and the ratio to ``plain``.

    python benchmarks/update_cost.py --reps 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag, default in (("hidden", 256), ("layers", 4), ("heads", 4), ("kv-heads", 2), ("ffn", 768),
                          ("vocab", 4096)):
        p.add_argument(f"--{flag}", type=int, default=default)
    p.add_argument("--groups", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args(argv)
    import numpy as np
    import torch

    from megatron_sgpo.algo.advantage import group_advantages
    from megatron_sgpo.algo.loss import LossConfig
    from megatron_sgpo.algo.samples import StepSamples
    from megatron_sgpo.batch import CostModel
    from megatron_sgpo.bench.throughput import llama_config
    from megatron_sgpo.platform.dist import destroy_parallel, init_parallel
    from megatron_sgpo.platform.layout import ParallelLayout
    from megatron_sgpo.train.policy import OptimConfig, Policy
    from megatron_sgpo.train.reference import ReferencePolicy
    from megatron_sgpo.train.update import update

    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    seqs, plens, gids = [], [], []
    for g in range(a.groups):
        prompt = rng.integers(1, a.vocab, rng.integers(32, 96)).tolist()
        for _ in range(int(rng.integers(2, 9))):
            seqs.append(prompt + rng.integers(1, a.vocab, rng.integers(16, 160)).tolist())
            plens.append(len(prompt))
            gids.append(g)
    gids = np.array(gids)
    rewards = rng.integers(0, 2, len(seqs)).astype(float)
    samples = StepSamples(seqs, plens, gids, group_advantages(rewards, gids), rewards=rewards)
    init_parallel(ParallelLayout(), seed=0)
    cfg = llama_config(a.hidden, a.layers, a.heads, a.kv_heads, a.ffn, a.vocab)
    policy = Policy(cfg, ParallelLayout(dp=1), 1, optim=OptimConfig(lr=1e-5), total_steps=10**6)
    reference = ReferencePolicy(policy)
    cost = CostModel(a=1.0, b=0.0)
    variants = {"plain": {}, "reference": {"reference": reference, "loss": LossConfig(kl_coef=0.01)},
                "mini_batches=4": {"mini_batches": 4}, "ppo_epochs=2": {"epochs": 2}}
    times = {}
    for name, kw in variants.items():
        kw = {"loss": LossConfig(), **kw}
        loss = kw.pop("loss")

        def step():
            update(policy, samples, loss, ParallelLayout(dp=1), 0, 4096, cost, rng=np.random.default_rng(1), **kw)

        step()
        times[name] = []
        for _ in range(a.reps):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    destroy_parallel()
    base = statistics.median(times["plain"])
    tokens = sum(len(s) for s in seqs)
    print(f"{len(seqs)} samples, {tokens} tokens, {torch.get_num_threads()} threads; median of {a.reps}")
    for name, secs in times.items():
        med = statistics.median(secs)
        print(f"{name:<15} {med:7.3f} s  x{med / base:5.2f}  (best {min(secs):.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
