"""torchrun worker: train one step at TP/PP, sync weights into a LocalEngine on rank 0, compare log-probs.

Usage: sync_worker.py --hf DIR --out DIR [--tp T] [--pp P]
Writes ``trainer.pt`` (from the last pipeline stage's first TP rank) with the trainer's log-probs
after the step, and ``engine.pt`` (rank 0) with the engine's teacher-forced log-probs before and
after the sync, its weight version and the sync's byte count.
"""
import argparse
import os

import numpy as np
import torch
import torch.distributed as dist

from megatron_sgpo.algo.loss import LossConfig
from megatron_sgpo.algo.samples import StepSamples
from megatron_sgpo.batch import CostModel
from megatron_sgpo.model.hf_io import HFCheckpoint
from megatron_sgpo.model.mapping import WeightMapping
from megatron_sgpo.platform.dist import destroy_parallel, init_parallel
from megatron_sgpo.platform.layout import ParallelLayout
from megatron_sgpo.rollout.local import LocalEngine
from megatron_sgpo.train.policy import OptimConfig, Policy
from megatron_sgpo.train.step import collate
from megatron_sgpo.train.update import update
from megatron_sgpo.weights.sync import sync_weights

FIXED = [[5, 9, 17, 3, 44, 61, 2, 8], [70, 12, 33, 1, 99, 40, 41, 42]]


def engine_logprobs(engine: LocalEngine) -> torch.Tensor:
    tokens = torch.tensor(FIXED)
    with torch.no_grad():
        logits = engine.model(tokens).logits.float()
    return torch.log_softmax(logits, -1)[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)


def parse_layout_args(extra=()):
    """--hf, --out, --tp, --pp (plus ``extra`` (flag, kwargs) pairs); one thread per rank."""
    p = argparse.ArgumentParser()
    p.add_argument("--hf", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    for flag, kwargs in extra:
        p.add_argument(flag, **kwargs)
    torch.set_num_threads(1)
    return p.parse_args()


def load_policy(hf: str, tp: int, pp: int):
    """The HF checkpoint as a megatron policy at TP x PP (DP from the world size), Adam at lr 1e-2."""
    layout = ParallelLayout(tp=tp, pp=pp)
    dp = init_parallel(layout, seed=1)
    ckpt = HFCheckpoint(hf)
    policy = Policy(ckpt.config, layout, dp, optim=OptimConfig(lr=1e-2))
    policy.load_hf(ckpt)
    return policy, ckpt, dp


def train_step(policy, dp: int, tp: int, pp: int, seed: int = 0) -> None:
    """One PPO step on six random sequences with mixed advantages."""
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, 100, 10).tolist() for _ in range(6)]
    samples = StepSamples(seqs, [4] * 6, np.array([0, 0, 0, 1, 1, 1]), np.array([1.0, -1, 0.5, -0.5, 1, -1]))
    update(policy, samples, LossConfig(), ParallelLayout(dp=dp, tp=tp, pp=pp), 0, 4096, CostModel(1.0, 0.0))


def main():
    a = parse_layout_args()
    policy, ckpt, dp = load_policy(a.hf, a.tp, a.pp)
    from megatron.core import parallel_state

    train_step(policy, dp, a.tp, a.pp)

    engine = LocalEngine(a.hf) if dist.get_rank() == 0 else None
    before = engine_logprobs(engine) if engine else None
    stats = sync_weights(policy.modules(), WeightMapping(ckpt.config, a.tp), engine, version=1, bucket_bytes=4096)
    if engine:
        torch.save({"before": before, "after": engine_logprobs(engine), "version": engine.weight_version,
                    "stats": stats}, os.path.join(a.out, "engine.pt"))
    mb = collate(FIXED, [1, 1])
    out = policy.logprobs([mb])
    if parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0:
        torch.save({"logprobs": out[0]["logprobs"][:, :-1]}, os.path.join(a.out, "trainer.pt"))
    dist.barrier()


if __name__ == "__main__":
    main()
    destroy_parallel()  # before interpreter exit: gloo's threads may otherwise abort the process
