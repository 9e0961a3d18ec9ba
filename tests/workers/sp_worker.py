"""torchrun worker: one RL step through Policy at a given TP, with or without sequence parallelism.

Usage: sp_worker.py --tp T [--sp] --out DIR HF_DIR [HF_DIR ...]
Every rank builds the same step (odd, different lengths over two micro-batches), computes old
log-probs and the policy-loss gradients, then takes an optimizer step. Rank 0 writes ``<basename>.pt``
with each sample's log-probs (real positions only), every gradient gathered over TP in HF naming,
how far the TP ranks' copies of replicated gradients differ, the micro-batch shapes and the grad norm.
"""
import argparse
import os

import numpy as np
import torch
import torch.distributed as dist

from megatron_sgpo.algo.advantage import group_advantages
from megatron_sgpo.algo.loss import LossConfig
from megatron_sgpo.algo.samples import StepSamples
from megatron_sgpo.batch import CostModel
from megatron_sgpo.model.hf_io import HFCheckpoint
from megatron_sgpo.model.mapping import WeightMapping, global_names
from megatron_sgpo.platform.dist import destroy_parallel, init_parallel
from megatron_sgpo.platform.layout import ParallelLayout
from megatron_sgpo.train.policy import Policy
from megatron_sgpo.train.update import attach_old_logprobs, make_loss_fn, normalizer, rank_micro_batches

LENGTHS = [7, 11, 13, 9]  # two groups of two; 13 + 11 fill one micro-batch of the budget below
MAX_TOKENS = 28


def make_step() -> StepSamples:
    rng = np.random.default_rng(0)
    seqs, plens = [], []
    for g, lengths in enumerate([LENGTHS[:2], LENGTHS[2:]]):
        prompt = rng.integers(0, 100, 4 + g).tolist()
        for n in lengths:
            seqs.append(prompt + rng.integers(0, 100, n - len(prompt)).tolist())
            plens.append(len(prompt))
    gids = np.array([0, 0, 1, 1])
    return StepSamples(seqs, plens, gids, group_advantages(np.array([1.0, 0.0, 0.0, 1.0]), gids),
                       np.array([1.0, 0.7, 1.2, 0.9]))


def gathered_grads(model, mapping: WeightMapping) -> tuple[dict, float]:
    """Every gradient in HF naming (TP shards all-gathered), and the largest spread between TP ranks' copies
    of a replicated one (non-zero would mean a missing all-reduce)."""
    from megatron.core import parallel_state

    group = parallel_state.get_tensor_model_parallel_group()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    params = dict(model.named_parameters())
    grads, spread = {}, 0.0
    for local, name in global_names(model).items():
        grad = params[local].main_grad.detach().contiguous()
        shards = [torch.empty_like(grad) for _ in range(tp)]
        dist.all_gather(shards, grad, group=group)
        if mapping.rule(name).kind == "replicated":
            spread = max([spread] + [(s - shards[0]).abs().max().item() for s in shards])
        grads.update(mapping.to_hf(name, shards))
    return grads, spread


def run(hf_dir: str, layout: ParallelLayout, dp: int) -> dict:
    from megatron.core import parallel_state

    ckpt = HFCheckpoint(hf_dir)
    policy = Policy(ckpt.config, layout, dp)
    policy.load_hf(ckpt)
    samples = make_step()
    mbs = rank_micro_batches(samples, layout, parallel_state.get_data_parallel_rank(), MAX_TOKENS,
                             CostModel(a=1.0, b=0.01))
    attach_old_logprobs(policy, mbs)
    logprobs = {}
    for mb in mbs:
        for row, i in enumerate(mb.fields["index"].tolist()):
            logprobs[i] = mb.fields["old_logprobs"][row, : len(samples.sequences[i]) - 1].clone()
        mb.fields["old_logprobs"] = mb.fields["old_logprobs"] + 0.3 * torch.cos(mb.fields["index"].float())[:, None]
    loss = LossConfig(kind="ppo", eps_low=0.2, eps_high=0.28)
    loss_fn = make_loss_fn(loss, normalizer(samples, loss))
    metrics = policy.compute_gradients(mbs, loss_fn)
    mapping = WeightMapping(policy.hf_config, layout.tp, policy.options.make_vocab_size_divisible_by)
    grads, spread = gathered_grads(policy.modules()[0], mapping)
    step = policy.train_step(mbs, loss_fn)
    return {"logprobs": logprobs, "grads": grads, "replicated_spread": spread, "loss": metrics["loss"].clone(),
            "shapes": [tuple(mb.tokens.shape) for mb in mbs], "grad_norm": step["grad_norm"]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--sp", action="store_true")
    p.add_argument("--out", required=True)
    p.add_argument("hf_dirs", nargs="+")
    a = p.parse_args()
    torch.set_num_threads(1)
    layout = ParallelLayout(tp=a.tp, sequence_parallel=a.sp)
    dp = init_parallel(layout, seed=1)
    layout = ParallelLayout(tp=a.tp, sequence_parallel=a.sp, dp=dp)
    for hf_dir in a.hf_dirs:
        result = run(hf_dir, layout, dp)
        if dist.get_rank() == 0:
            torch.save(result, os.path.join(a.out, os.path.basename(hf_dir.rstrip("/")) + ".pt"))
    dist.barrier()


if __name__ == "__main__":
    main()
    destroy_parallel()  # before interpreter exit: gloo's threads may otherwise abort the process
