"""Save and load time and size of the RL loop's checkpoints, with and without the distributed optimizer.

Run under torchrun (DP = world size). For each optimizer the policy is loaded from ``--hf``, takes one real
update (so Adam's moments exist), then ``megatron_sgpo.loop.checkpoint.save`` and ``load`` (into a freshly built
policy, as a resume does) are timed ``--reps`` times; the table gives medians, the checkpoint's size and the
ratios to the plain optimizer measured in the same run.

    torchrun --nproc-per-node 2 benchmarks/checkpoint_io.py --hf megatron_sgpo/assets/arith-llama-tiny --out /tmp/ck
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _samples(vocab: int, groups: int = 4):
    """A small rollout batch: one update creates Adam's moments (its size does not change the checkpoint's)."""
    import numpy as np

    from megatron_sgpo.algo.advantage import group_advantages
    from megatron_sgpo.algo.samples import StepSamples

    rng = np.random.default_rng(0)
    seqs, plens, gids = [], [], []
    for g in range(groups):
        prompt = rng.integers(1, vocab, 8).tolist()
        for _ in range(2):
            seqs.append(prompt + rng.integers(1, vocab, int(rng.integers(4, 16))).tolist())
            plens.append(len(prompt))
            gids.append(g)
    gids = np.array(gids)
    rewards = rng.integers(0, 2, len(seqs)).astype(float)
    return StepSamples(seqs, plens, gids, group_advantages(rewards, gids), rewards=rewards)


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hf", required=True, help="HF folder of the policy")
    p.add_argument("--out", required=True, help="scratch folder (removed at the end)")
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args(argv)
    import numpy as np
    import torch
    import torch.distributed as dist

    from megatron_sgpo.algo.loss import LossConfig
    from megatron_sgpo.batch import CostModel
    from megatron_sgpo.loop import checkpoint
    from megatron_sgpo.model.build import ModelOptions
    from megatron_sgpo.model.hf_io import HFCheckpoint
    from megatron_sgpo.platform.dist import destroy_parallel, init_parallel
    from megatron_sgpo.platform.layout import ParallelLayout
    from megatron_sgpo.train.policy import OptimConfig, Policy
    from megatron_sgpo.train.update import update

    torch.set_num_threads(1)
    checkpoint.prepare_writer()
    dp = init_parallel(ParallelLayout(), seed=0)
    layout = ParallelLayout(dp=dp)
    from megatron.core import parallel_state

    hf = HFCheckpoint(a.hf)
    rows = {}
    for name, distributed in (("adam", False), ("distributed adam", True)):
        def build():
            policy = Policy(hf.config, layout, dp, ModelOptions(init_weights=False),
                            OptimConfig(lr=1e-5, distributed_optimizer=distributed), total_steps=100)
            policy.load_hf(hf)
            return policy

        policy = build()
        update(policy, _samples(hf.config["vocab_size"]), LossConfig(), layout,
               parallel_state.get_data_parallel_rank(), 4096, CostModel(a=1.0, b=0.0), rng=np.random.default_rng(0))
        out = os.path.join(a.out, name.replace(" ", "_"))
        saves, loads, path = [], [], None
        fresh = build()
        for rep in range(a.reps):
            dist.barrier()
            start = time.perf_counter()
            path = checkpoint.save(out, rep + 1, policy, {"step": rep + 1}, a.hf, keep=1)
            saves.append(time.perf_counter() - start)
            dist.barrier()
            start = time.perf_counter()
            checkpoint.load(path, fresh)
            loads.append(time.perf_counter() - start)
        rows[name] = (statistics.median(saves), statistics.median(loads), _folder_bytes(path))
        del policy, fresh  # two policies with optimizer state per variant: free them before the next
        gc.collect()
    if dist.get_rank() == 0:
        shutil.rmtree(a.out, ignore_errors=True)
        print(f"{hf.path}: DP={dp}, median of {a.reps}; ratios against the plain optimizer")
        base = rows["adam"]
        for name, (save_s, load_s, size) in rows.items():
            print(f"{name:<17} save {save_s:6.2f} s (x{save_s / base[0]:4.2f})  load {load_s:6.2f} s "
                  f"(x{load_s / base[1]:4.2f})  size {size / 1e6:8.1f} MB (x{size / base[2]:4.2f})")
    destroy_parallel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
