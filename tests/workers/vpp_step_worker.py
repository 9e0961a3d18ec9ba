"""torchrun worker: one RL step through Policy at a given PP/VPP; saves gradients and log-probs.

Usage: vpp_step_worker.py --hf DIR --out FILE [--pp P] [--vpp V] [--max-tokens N]
The step's micro-batches differ in sequence count and padded length, as RL micro-batches do, so
the interleaved schedule must exchange shapes before every activation. Rank 0 saves every
parameter's reduced gradient (global names, from all stages), the old log-probs and the log-probs
after the optimizer step (per sample, response positions), and the micro-batch shapes.
"""
import argparse

import torch
import torch.distributed as dist
from dp_grad_worker import make_step

from megatron_sgpo.algo.loss import LossConfig
from megatron_sgpo.batch import CostModel
from megatron_sgpo.model.hf_io import HFCheckpoint
from megatron_sgpo.model.mapping import global_names
from megatron_sgpo.platform.dist import destroy_parallel, init_parallel
from megatron_sgpo.platform.layout import ParallelLayout
from megatron_sgpo.train.policy import Policy
from megatron_sgpo.train.update import attach_old_logprobs, make_loss_fn, normalizer, rank_micro_batches


def per_sample(mbs, logprobs, samples) -> dict[int, torch.Tensor]:
    """Log-probs of each sample's real positions, keyed by sample index (empty off the last stage)."""
    out = {}
    for mb, lp in zip(mbs, logprobs):
        for row, i in enumerate(mb.fields["index"].tolist()):
            out[i] = lp[row, : len(samples.sequences[i]) - 1].clone()
    return out


def gather_to_rank0(obj: dict) -> dict:
    parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, parts, dst=0)
    return {k: v for part in parts for k, v in part.items()} if parts else {}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hf", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--vpp", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=48)
    a = p.parse_args()
    torch.set_num_threads(1)
    layout = ParallelLayout(pp=a.pp, vpp=a.vpp)
    dp = init_parallel(layout, seed=1)
    ckpt = HFCheckpoint(a.hf)
    policy = Policy(ckpt.config, layout, dp)
    policy.load_hf(ckpt)
    samples = make_step()
    mbs = rank_micro_batches(samples, ParallelLayout(pp=a.pp, vpp=a.vpp, dp=dp), 0, a.max_tokens,
                             CostModel(a=1.0, b=0.01))
    attach_old_logprobs(policy, mbs)
    old = per_sample(mbs, [mb.fields["old_logprobs"] for mb in mbs if "old_logprobs" in mb.fields], samples)
    loss = LossConfig(kind="ppo", eps_low=0.2, eps_high=0.28)
    policy.train_step(mbs, make_loss_fn(loss, normalizer(samples, loss)))
    grads = {}
    for chunk in policy.modules():
        names = global_names(chunk)
        grads.update({names[n]: param.main_grad.detach().clone() for n, param in chunk.named_parameters()})
    new = per_sample(mbs, [o["logprobs"] for o in policy.logprobs(mbs)], samples)
    result = {"grads": gather_to_rank0(grads), "old_logprobs": gather_to_rank0(old),
              "new_logprobs": gather_to_rank0(new)}
    if dist.get_rank() == 0:
        result["shapes"] = [tuple(mb.tokens.shape) for mb in mbs]
        torch.save(result, a.out)
    dist.barrier()


if __name__ == "__main__":
    main()
    destroy_parallel()  # before interpreter exit: gloo's threads may otherwise abort the process
