"""torchrun worker: gradients of one RL step over variable-size groups, at any DP size.

Usage: dp_grad_worker.py --hf DIR --out FILE --max-tokens N [--tp T]
Every rank builds the same step (seeded), trains its share through the DP-aware batcher, and
rank 0 saves the reduced gradient (``main_grad``) of every parameter plus the micro-batch count.
"""
import argparse

import numpy as np
import torch
import torch.distributed as dist

from megatron_sgpo.algo.advantage import group_advantages
from megatron_sgpo.algo.loss import LossConfig
from megatron_sgpo.algo.samples import StepSamples
from megatron_sgpo.batch import CostModel
from megatron_sgpo.model.hf_io import HFCheckpoint
from megatron_sgpo.model.mapping import global_names
from megatron_sgpo.platform.dist import destroy_parallel, init_parallel
from megatron_sgpo.platform.layout import ParallelLayout
from megatron_sgpo.train.policy import NonFiniteLossError, Policy
from megatron_sgpo.train.update import attach_old_logprobs, make_loss_fn, normalizer, rank_micro_batches


def make_step(seed: int = 0) -> StepSamples:
    """Groups of sizes 1..6 with random lengths and binary rewards."""
    rng = np.random.default_rng(seed)
    seqs, plens, gids, rewards = [], [], [], []
    for g, size in enumerate([1, 2, 3, 5, 6, 4]):
        prompt = rng.integers(0, 100, rng.integers(3, 7)).tolist()
        for _ in range(size):
            resp = rng.integers(0, 100, rng.integers(1, 12)).tolist()
            seqs.append(prompt + resp)
            plens.append(len(prompt))
            gids.append(g)
            rewards.append(float(rng.integers(0, 2)))
    gids = np.array(gids)
    adv = group_advantages(np.array(rewards), gids)
    weights = rng.uniform(0.5, 1.5, len(seqs))
    return StepSamples(seqs, plens, gids, adv, weights)


def nan_loss_is_refused(policy, mbs) -> dict:
    """A NaN loss on one rank must raise on every rank and leave the weights untouched."""
    before = [p.detach().clone() for p in policy.modules()[0].parameters()]

    def nan_loss(logprobs, entropy, mb):
        bad = float("nan") if dist.get_rank() == 0 else 0.0
        return (logprobs * mb.loss_mask).sum() * bad, {"tokens": mb.loss_mask.sum()}

    try:
        policy.train_step(mbs, nan_loss)
        raised = ""
    except NonFiniteLossError as exc:
        raised = str(exc)
    after = list(policy.modules()[0].parameters())
    return {"raised": raised, "unchanged": all(torch.equal(b, a) for b, a in zip(before, after))}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hf", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--nan-check", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    layout = ParallelLayout(tp=a.tp)
    dp = init_parallel(layout, seed=1)
    from megatron.core import parallel_state

    ckpt = HFCheckpoint(a.hf)
    policy = Policy(ckpt.config, layout, dp)
    policy.load_hf(ckpt)
    samples = make_step()
    layout = ParallelLayout(dp=dp, tp=a.tp)
    cost = CostModel(a=1.0, b=0.01)
    mbs = rank_micro_batches(samples, layout, parallel_state.get_data_parallel_rank(), a.max_tokens, cost)
    attach_old_logprobs(policy, mbs)
    for mb in mbs:  # old log-probs off-policy by a per-sample amount, so clipping is exercised
        shift = 0.3 * torch.cos(mb.fields["index"].float())[:, None]
        mb.fields["old_logprobs"] = mb.fields["old_logprobs"] + shift
    loss = LossConfig(kind="ppo", eps_low=0.2, eps_high=0.28)
    metrics = policy.compute_gradients(mbs, make_loss_fn(loss, normalizer(samples, loss)))
    counts = torch.tensor([len(mbs)])
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    model = policy.modules()[0]
    names = global_names(model)
    grads = {names[n]: p.main_grad.detach().clone() for n, p in model.named_parameters()}
    nan_result = nan_loss_is_refused(policy, mbs) if a.nan_check else None  # after the gradients are copied
    if dist.get_rank() == 0:
        torch.save({"grads": grads, "micro_batches": int(counts), "metrics": {k: v.clone() for k, v in metrics.items()},
                    "nan": nan_result}, a.out)
    dist.barrier()


if __name__ == "__main__":
    main()
    destroy_parallel()  # before interpreter exit: gloo's threads may otherwise abort the process
