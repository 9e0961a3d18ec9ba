"""One RL update: a step's samples → PPO mini-batches → this rank's micro-batches → old (and reference)
log-probs → one optimizer step per mini-batch, for each PPO epoch.

Every rank holds the whole step's samples (they are small: token ids and a few numbers per sample),
so every rank computes the same split, the same batch plans and the same global normalisers, and then trains
only its own share. Each mini-batch's normaliser (response tokens, or sequences, of the mini-batch across all
ranks) is fixed before batching, which is what makes every optimizer step's gradient independent of DP size
and micro-batching. Old log-probs are the policy's before the step's first update, computed once per
micro-batch; from the second mini-batch (or epoch) on, the ratio departs from 1 and clipping acts.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from megatron_sgpo.algo.advantage import group_advantages
from megatron_sgpo.algo.loss import LossConfig, kl_penalty, policy_loss
from megatron_sgpo.algo.mismatch import MismatchConfig, mismatch_weights
from megatron_sgpo.algo.samples import StepSamples
from megatron_sgpo.batch import CostModel, length_multiple, make_batches
from megatron_sgpo.platform.layout import ParallelLayout
from megatron_sgpo.train.step import MicroBatch, collate


def normalizer(samples: StepSamples, loss: LossConfig) -> float:
    """The global denominator of a mini-batch's loss (token_mean: response tokens; seq_mean: sequences)."""
    return float(samples.response_tokens() if loss.agg == "token_mean" else len(samples.sequences))


def mini_batch_indices(num_samples: int, mini_batches: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The step's samples split into ``mini_batches`` near-equal sets (a seeded permutation; in order for one)."""
    if mini_batches > num_samples:
        raise ValueError(f"train.mini_batches={mini_batches} exceeds the step's {num_samples} trained samples")
    order = np.arange(num_samples) if mini_batches == 1 else rng.permutation(num_samples)
    return [np.sort(part) for part in np.array_split(order, mini_batches)]


def _response_field(mb: MicroBatch, samples: StepSamples, idx, per_sample: list) -> torch.Tensor:
    """Per-response-token values of the samples at ``idx`` aligned like ``mb.loss_mask`` (0 elsewhere): response
    token j of a sample sits at position prompt_len - 1 + j."""
    out = torch.zeros_like(mb.loss_mask)
    for row, i in enumerate(idx):
        p, values = samples.prompt_lens[i], per_sample[i]
        out[row, p - 1: p - 1 + len(values)] = torch.as_tensor(values, dtype=torch.float32)
    return out


def rank_micro_batches(samples: StepSamples, layout: ParallelLayout, dp_rank: int, max_tokens: int,
                       cost: CostModel, pad_id: int = 0, policy_version: int | None = None) -> list[MicroBatch]:
    """This DP rank's micro-batches, padded as the layout requires, with per-sample advantage and weight fields
    and, when the samples carry them, the engine's log-probs and (given the trained ``policy_version``) how many
    versions each token lags it, aligned like ``loss_mask``."""
    lengths = np.array([len(s) for s in samples.sequences], dtype=np.int64)
    plan = make_batches(lengths, np.asarray(samples.group_ids), layout, max_tokens, cost, mode="padded")
    weights = samples.weights if samples.weights is not None else np.ones(len(lengths))
    out = []
    for idx in plan.per_rank[dp_rank]:
        mb = collate([samples.sequences[i] for i in idx], [samples.prompt_lens[i] for i in idx], pad_id,
                     pad_to_multiple=length_multiple(layout))
        mb.fields["advantages"] = torch.as_tensor(np.asarray(samples.advantages)[idx], dtype=torch.float32)
        mb.fields["weights"] = torch.as_tensor(np.asarray(weights)[idx], dtype=torch.float32)
        mb.fields["index"] = torch.as_tensor(idx, dtype=torch.long)
        if samples.engine_logprobs is not None:
            mb.fields["engine_logprobs"] = _response_field(mb, samples, idx, samples.engine_logprobs)
        if samples.token_versions is not None and policy_version is not None:
            lags = [[policy_version - v for v in versions] for versions in samples.token_versions]
            mb.fields["staleness"] = _response_field(mb, samples, idx, lags)
        out.append(mb)
    return out


def attach_logprobs(model, micro_batches: list[MicroBatch], field: str, temperature: float = 1.0) -> None:
    """Log-probs of ``model`` (the policy before the update, or the frozen reference), stored on each micro-batch
    under ``field`` (last pipeline stage; elsewhere there is nothing to store)."""
    outputs = model.logprobs(micro_batches, temperature)
    for mb, out in zip(micro_batches, outputs):
        mb.fields[field] = out["logprobs"]


def attach_old_logprobs(policy, micro_batches: list[MicroBatch], temperature: float = 1.0) -> None:
    attach_logprobs(policy, micro_batches, "old_logprobs", temperature)


def make_loss_fn(cfg: LossConfig, norm: float, mismatch: MismatchConfig = MismatchConfig()):
    """The per-micro-batch loss for :func:`megatron_sgpo.train.step.forward_backward`."""

    def loss_fn(logprobs, entropy, mb: MicroBatch):
        token_weights, extra = None, {}
        if "engine_logprobs" in mb.fields:
            weights, extra = mismatch_weights(mb.fields["old_logprobs"], mb.fields["engine_logprobs"], mb.loss_mask,
                                              mismatch, mb.fields.get("staleness"))
            token_weights = weights if mismatch.corrects else None
        loss, metrics = policy_loss(
            logprobs, mb.fields["old_logprobs"], mb.fields["advantages"], mb.loss_mask, norm, cfg,
            ref_logp=mb.fields.get("ref_logprobs"), entropy=entropy, sample_weights=mb.fields["weights"],
            token_weights=token_weights,
        )
        return loss, {**metrics, **extra}

    return loss_fn


def kl_penalised_advantages(plans: list, samples: StepSamples, loss: LossConfig) -> np.ndarray:
    """Group advantages of reward - kl_coef * KL(old || ref) summed over each sequence (``loss.kl_in="reward"``).

    The KL of a sample is known on the last pipeline stage of the DP rank that holds it; one all-reduce over
    the world (of a CPU tensor: gloo) gives every rank every sample's KL, so every rank recomputes the same
    advantages."""
    from megatron.core import parallel_state

    if samples.rewards is None:
        raise ValueError("loss.kl_in='reward' needs the samples' rewards")
    seq_kl = torch.zeros(len(samples.sequences), dtype=torch.float64)
    if parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0:
        for mbs, index in plans:
            for mb in mbs:
                kl = kl_penalty(mb.fields["old_logprobs"], mb.fields["ref_logprobs"], loss.kl_type)
                per_seq = (kl * mb.loss_mask.to(kl.device)).sum(dim=1).double().cpu()
                seq_kl[index[mb.fields["index"].numpy()]] = per_seq
    dist.all_reduce(seq_kl)
    return group_advantages(np.asarray(samples.rewards) - loss.kl_coef * seq_kl.numpy(), samples.group_ids)


def global_sums(local: dict) -> dict:
    """Metric sums over the whole step, on every rank. Only the last pipeline stage computes the loss and its
    TP ranks compute the same sums, so each DP rank's share is counted once, from its (last stage, TP rank 0)."""
    from megatron.core import parallel_state

    owner = parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, local if owner else {})
    total: dict[str, float] = {}
    for sums in everyone:
        for key, value in sums.items():
            total[key] = total.get(key, 0.0) + value
    return total


def update(policy, samples: StepSamples, loss: LossConfig, layout: ParallelLayout, dp_rank: int,
           max_tokens: int, cost: CostModel, temperature: float = 1.0, mini_batches: int = 1, epochs: int = 1,
           rng: np.random.Generator | None = None, reference=None, mismatch: MismatchConfig = MismatchConfig(),
           policy_version: int | None = None) -> dict:
    """Old (and reference) log-probs for every mini-batch, then ``epochs`` passes of one optimizer step per
    mini-batch over this rank's share. ``policy_version``: the weight version being trained, against which the
    samples' token versions give each token's staleness. Returns the step's metric sums over all ranks, the mean
    gradient norm and learning rate, and the step counts."""
    plans = []
    for index in mini_batch_indices(len(samples.sequences), mini_batches, rng or np.random.default_rng(0)):
        mbs = rank_micro_batches(samples.subset(index), layout, dp_rank, max_tokens, cost,
                                 policy_version=policy_version)
        attach_old_logprobs(policy, mbs, temperature)
        if reference is not None:
            attach_logprobs(reference, mbs, "ref_logprobs", temperature)
        plans.append((mbs, index))
    if loss.kl_coef > 0 and loss.kl_in == "reward":
        advantages = kl_penalised_advantages(plans, samples, loss)
        for mbs, index in plans:
            for mb in mbs:
                mb.fields["advantages"] = torch.as_tensor(advantages[index[mb.fields["index"].numpy()]],
                                                          dtype=torch.float32)
    totals: dict[str, float] = {}
    per_step: dict[str, list] = {"grad_norm": [], "lr": []}
    for _ in range(epochs):
        for mbs, index in plans:
            loss_fn = make_loss_fn(loss, normalizer(samples.subset(index), loss), mismatch)
            metrics = policy.train_step(mbs, loss_fn, temperature, with_entropy=loss.entropy_coef != 0)
            for key, values in per_step.items():
                values.append(metrics.pop(key))
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value
    totals = global_sums(totals)
    totals.update({key: float(np.mean(values)) for key, values in per_step.items()})
    totals["optimizer_steps"] = len(per_step["lr"])
    totals["micro_batches"] = sum(len(mbs) for mbs, _ in plans)
    return totals
