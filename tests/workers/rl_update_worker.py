"""torchrun worker: the RL update's options on the real megatron model (gloo), one scenario per call.

Usage: rl_update_worker.py --hf DIR --out FILE SCENARIO [--kind ppo] [--tp T]
  minibatch  one rollout batch in 4 PPO mini-batches (4 optimizer steps): final weights, clipping, steps
  kl         a frozen reference and the KL term: KL at step 0, KL after updates, reference unchanged, and the
             megatron gradient of the KL term against autograd through an explicit computation
  lr         the learning rate each optimizer step used under warmup + cosine decay
  mismatch   engine log-probs from a perturbed copy of the policy: the logged mismatch and the TIS weights
The policy is built as ``sgpo train`` builds it (no random init: the HF weights overwrite everything), so TP > 1
also checks that megatron still tags the sharded weights its grad norm reads. Rank 0 saves a dict of results.
"""
import argparse

import numpy as np
import torch
import torch.distributed as dist

from megatron_sgpo.algo.advantage import group_advantages
from megatron_sgpo.algo.loss import LossConfig, kl_penalty
from megatron_sgpo.algo.mismatch import MismatchConfig
from megatron_sgpo.algo.samples import StepSamples
from megatron_sgpo.batch import CostModel
from megatron_sgpo.model.build import ModelOptions
from megatron_sgpo.model.hf_io import HFCheckpoint
from megatron_sgpo.model.mapping import global_names
from megatron_sgpo.platform.dist import destroy_parallel, init_parallel
from megatron_sgpo.platform.layout import ParallelLayout
from megatron_sgpo.train.policy import OptimConfig, Policy
from megatron_sgpo.train.reference import ReferencePolicy
from megatron_sgpo.train.update import attach_logprobs, make_loss_fn, normalizer, rank_micro_batches, update

COST = CostModel(a=1.0, b=0.01)


def make_step(seed: int = 0, engine_logprobs=None) -> StepSamples:
    """Groups of sizes 2..6 with random lengths and binary rewards (each with some signal)."""
    rng = np.random.default_rng(seed)
    seqs, plens, gids, rewards = [], [], [], []
    for g, size in enumerate([2, 3, 5, 6, 4]):
        prompt = rng.integers(0, 100, rng.integers(3, 7)).tolist()
        for j in range(size):
            seqs.append(prompt + rng.integers(0, 100, rng.integers(2, 12)).tolist())
            plens.append(len(prompt))
            gids.append(g)
            rewards.append(float(j % 2))
    gids, rewards = np.array(gids), np.array(rewards)
    return StepSamples(seqs, plens, gids, group_advantages(rewards, gids), None, engine_logprobs, rewards)


def flat_weights(policy) -> dict:
    model = policy.modules()[0]
    names = global_names(model)
    return {names[n]: p.detach().clone() for n, p in model.named_parameters()}


def minibatch(policy, layout, dp_rank, kind: str) -> dict:
    loss = LossConfig(kind=kind, eps_low=0.2, eps_high=0.28)
    metrics = update(policy, make_step(), loss, layout, dp_rank, 96, COST, mini_batches=4, epochs=1,
                     rng=np.random.default_rng(3))
    return {"weights": flat_weights(policy), "metrics": metrics}


def kl(policy, layout, dp_rank) -> dict:
    reference = ReferencePolicy(policy)
    ref_before = [p.detach().clone() for chunk in reference.chunks for p in chunk.parameters()]
    loss = LossConfig(kl_coef=0.2, kl_type="k3")
    samples = make_step()
    kl_sums = []
    for _ in range(3):
        metrics = update(policy, samples, loss, layout, dp_rank, 4096, COST, reference=reference)
        kl_sums.append(metrics["kl_sum"] / metrics["tokens"])
    ref_after = [p.detach() for chunk in reference.chunks for p in chunk.parameters()]
    unchanged = all(torch.equal(a, b) for a, b in zip(ref_before, ref_after))
    # the gradient of the KL term alone (zero advantages): megatron's path against autograd by hand
    only_kl = StepSamples(samples.sequences, samples.prompt_lens, samples.group_ids,
                          np.zeros(len(samples.sequences)), None, None, samples.rewards)
    mbs = rank_micro_batches(only_kl, layout, dp_rank, 4096, COST)
    attach_logprobs(policy, mbs, "old_logprobs")
    attach_logprobs(reference, mbs, "ref_logprobs")
    norm = normalizer(only_kl, loss)
    model = policy.modules()[0]
    params = [p for p in model.parameters()]
    explicit = [torch.zeros_like(p) for p in params]
    vocab = policy.vocab_size
    for mb in mbs:
        positions = torch.arange(mb.tokens.shape[1]).expand_as(mb.tokens)
        logits = model(mb.tokens, positions, None)[..., :vocab].float()
        logp = torch.log_softmax(logits, -1).gather(-1, mb.targets[..., None])[..., 0]
        term = loss.kl_coef * (kl_penalty(logp, mb.fields["ref_logprobs"], "k3") * mb.loss_mask).sum() / norm
        for acc, g in zip(explicit, torch.autograd.grad(term, params, allow_unused=True)):
            if g is not None:
                acc += g
    policy.compute_gradients(mbs, make_loss_fn(loss, norm))
    worst = max((p.main_grad - e).abs().max().item() for p, e in zip(params, explicit))
    scale = max(e.abs().max().item() for e in explicit)
    return {"kl_per_token": kl_sums, "reference_unchanged": unchanged, "grad_max_diff": worst, "grad_scale": scale}


def lr(policy, layout, dp_rank) -> dict:
    return {"lrs": [update(policy, make_step(), LossConfig(), layout, dp_rank, 4096, COST)["lr"] for _ in range(8)]}


def mismatch(policy, layout, dp_rank, hf) -> dict:
    """Engine log-probs of the samples from the unperturbed, then a perturbed copy of the policy's weights."""
    out = {}
    for name, noise in (("exact", 0.0), ("perturbed", 0.05)):
        engine = ReferencePolicy(policy)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in (q for chunk in engine.chunks for q in chunk.parameters()):
                p.add_(noise * torch.randn(p.shape, generator=gen))
        base = make_step()
        mbs = rank_micro_batches(base, layout, dp_rank, 4096, COST)
        attach_logprobs(engine, mbs, "engine")
        lps = [None] * len(base.sequences)
        for mb in mbs:
            for row, i in enumerate(mb.fields["index"].tolist()):
                p, n = base.prompt_lens[i], len(base.sequences[i]) - base.prompt_lens[i]
                lps[i] = mb.fields["engine"][row, p - 1: p - 1 + n].tolist()
        fresh = Policy(hf.config, layout, layout.dp, optim=OptimConfig(lr=1e-3))
        fresh.load_hf(hf)
        cfg = MismatchConfig(tis="token", tis_cap=1.2)
        metrics = update(fresh, make_step(engine_logprobs=lps), LossConfig(), layout, dp_rank, 4096, COST,
                         mismatch=cfg)
        out[name] = {k: metrics[k] for k in ("mismatch_abs_sum", "mismatch_kl_sum", "is_weight_sum", "tokens")}
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hf", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--kind", default="ppo")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("scenario", choices=["minibatch", "kl", "lr", "mismatch"])
    a = p.parse_args()
    torch.set_num_threads(1)
    dp = init_parallel(ParallelLayout(tp=a.tp), seed=1)
    layout = ParallelLayout(tp=a.tp, dp=dp)
    from megatron.core import parallel_state

    dp_rank = parallel_state.get_data_parallel_rank()
    hf = HFCheckpoint(a.hf)
    optim = OptimConfig(lr=1e-2) if a.scenario != "lr" else OptimConfig(
        lr=1e-3, lr_warmup_steps=2, lr_decay_style="cosine", lr_decay_steps=6, min_lr=1e-4)
    policy = Policy(hf.config, layout, dp, options=ModelOptions(init_weights=False), optim=optim, total_steps=8)
    policy.load_hf(hf)
    if a.scenario == "minibatch":
        result = minibatch(policy, layout, dp_rank, a.kind)
    elif a.scenario == "kl":
        result = kl(policy, layout, dp_rank)
    elif a.scenario == "lr":
        result = lr(policy, layout, dp_rank)
    else:
        result = mismatch(policy, layout, dp_rank, hf)
    if dist.get_rank() == 0:
        torch.save(result, a.out)
    dist.barrier()


if __name__ == "__main__":
    main()
    destroy_parallel()  # before interpreter exit: gloo's threads may otherwise abort the process
