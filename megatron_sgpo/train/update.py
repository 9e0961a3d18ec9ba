"""One RL update: a step's samples → this rank's micro-batches → old log-probs → policy-loss step.

Every rank holds the whole step's samples (they are small: token ids and a few numbers per sample),
so every rank computes the same batch plan and the same global normaliser, and then trains only
its own share. The normaliser (response tokens, or sequences, of the whole step) is fixed before
batching, which is what makes the gradient independent of DP size and micro-batching.
"""
from __future__ import annotations

import numpy as np
import torch

from megatron_sgpo.algo.loss import LossConfig, policy_loss
from megatron_sgpo.algo.samples import StepSamples
from megatron_sgpo.batch import CostModel, length_multiple, make_batches
from megatron_sgpo.platform.layout import ParallelLayout
from megatron_sgpo.train.step import MicroBatch, collate


def normalizer(samples: StepSamples, loss: LossConfig) -> float:
    """The global denominator of the step's loss (token_mean: response tokens; seq_mean: sequences)."""
    return float(samples.response_tokens() if loss.agg == "token_mean" else len(samples.sequences))


def rank_micro_batches(samples: StepSamples, layout: ParallelLayout, dp_rank: int, max_tokens: int,
                       cost: CostModel, pad_id: int = 0) -> list[MicroBatch]:
    """This DP rank's micro-batches, padded as the layout requires, with per-sample advantage and weight fields."""
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
        out.append(mb)
    return out


def attach_old_logprobs(policy, micro_batches: list[MicroBatch], temperature: float = 1.0) -> None:
    """Log-probs of the current (pre-update) policy, stored on each micro-batch (last pipeline stage)."""
    outputs = policy.logprobs(micro_batches, temperature)
    for mb, out in zip(micro_batches, outputs):
        mb.fields["old_logprobs"] = out["logprobs"]


def make_loss_fn(cfg: LossConfig, norm: float):
    """The per-micro-batch loss for :func:`megatron_sgpo.train.step.forward_backward`."""

    def loss_fn(logprobs, entropy, mb: MicroBatch):
        return policy_loss(
            logprobs, mb.fields["old_logprobs"], mb.fields["advantages"], mb.loss_mask, norm, cfg,
            ref_logp=mb.fields.get("ref_logprobs"), entropy=entropy, sample_weights=mb.fields["weights"],
        )

    return loss_fn


def update(policy, samples: StepSamples, loss: LossConfig, layout: ParallelLayout, dp_rank: int,
           max_tokens: int, cost: CostModel, temperature: float = 1.0) -> dict:
    """Old log-probs, then one optimizer step over this rank's share of ``samples``."""
    mbs = rank_micro_batches(samples, layout, dp_rank, max_tokens, cost)
    attach_old_logprobs(policy, mbs, temperature)
    metrics = policy.train_step(mbs, make_loss_fn(loss, normalizer(samples, loss)), temperature,
                                with_entropy=loss.entropy_coef != 0)
    metrics["micro_batches"] = len(mbs)
    return metrics
