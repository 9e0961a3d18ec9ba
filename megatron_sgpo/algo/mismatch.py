"""Train–inference mismatch: how far the engine's sampling distribution is from the trainer's, and its correction.

Rollouts are sampled by the engine (its kernels, its precision), but the update treats them as samples of the
trainer's policy. With per-token log-probs of both for the sampled tokens, ``old`` (trainer, before the update)
and ``engine`` (behaviour), the log-ratio is d_t = old_t - engine_t:
- measured every step: mean |d_t| and the k3 estimate of KL(engine || trainer), E[e^{d} - 1 - d];
- truncated importance sampling (TIS), off by default: each token's loss is weighted by w_t = min(e^{d_t}, cap)
  ("token"), or every token of a sequence by min(e^{sum_t d_t}, cap) ("sequence"), which corrects the
  off-policyness of the engine's samples with bounded variance;
- masking (the IcePop / MIS family), off by default: tokens whose ratio e^{d_t} lies outside [mask_low,
  mask_high] get weight 0 (their gradient is dropped; the loss normaliser is unchanged);
- staleness masking, off by default: partial rollouts (a response resumed under new weights) and asynchronous
  rollouts (made while the previous step trains) hold tokens of older weight versions; a token whose version is
  more than ``max_staleness`` behind the policy being trained gets weight 0. Tokens within the bound keep their
  engine log-prob as behaviour policy, so TIS corrects them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from megatron_sgpo.choices import check_choices


@dataclass(frozen=True)
class MismatchConfig:
    tis: Literal["off", "token", "sequence"] = "off"
    tis_cap: float = 2.0
    mask_low: Optional[float] = None
    mask_high: Optional[float] = None
    max_staleness: Optional[int] = None  # versions a token may lag the trained policy (partial or async rollouts)

    def __post_init__(self) -> None:
        check_choices(self)
        if self.max_staleness is not None and self.max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {self.max_staleness}")
        if self.tis_cap <= 0:
            raise ValueError(f"tis_cap must be > 0, got {self.tis_cap}")
        if (self.mask_low is None) != (self.mask_high is None):
            raise ValueError("mask_low and mask_high are set together (both or neither)")
        if self.mask_low is not None and not 0 <= self.mask_low < 1 < self.mask_high:
            raise ValueError(f"masking needs 0 <= mask_low < 1 < mask_high, got {self.mask_low}, {self.mask_high}")

    @property
    def corrects(self) -> bool:
        return self.tis != "off" or self.mask_low is not None or self.max_staleness is not None


def mismatch_weights(old_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor,
                     cfg: MismatchConfig, staleness: Optional[torch.Tensor] = None,
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token loss weights [B, T] (detached) and summed metrics of this micro-batch (all-reduce, then divide
    by the token count): ``mismatch_abs_sum``, ``mismatch_kl_sum``, ``is_weight_sum``, ``masked_tokens``, and with
    ``staleness`` (versions each token lags the policy, aligned like ``mask``) ``stale_tokens`` and
    ``stale_masked_tokens``."""
    m = mask.to(old_logp.dtype)
    d = (old_logp - engine_logp).detach() * m
    weights = torch.ones_like(d)
    if cfg.tis == "token":
        weights = torch.clamp(torch.exp(d), max=cfg.tis_cap)
    elif cfg.tis == "sequence":
        weights = torch.clamp(torch.exp(d.sum(dim=1, keepdim=True)), max=cfg.tis_cap).expand_as(d)
    masked = torch.zeros_like(m)
    if cfg.mask_low is not None:
        ratio = torch.exp(d)
        masked = ((ratio < cfg.mask_low) | (ratio > cfg.mask_high)).to(m.dtype) * m
        weights = weights * (1.0 - masked)
    metrics = {"mismatch_abs_sum": d.abs().sum(), "mismatch_kl_sum": ((torch.expm1(d) - d) * m).sum(),
               "is_weight_sum": (weights * m).sum(), "masked_tokens": masked.sum()}
    if staleness is not None:
        stale = staleness.to(m.device)
        too_old = (stale > cfg.max_staleness).to(m.dtype) * m if cfg.max_staleness is not None else torch.zeros_like(m)
        weights = weights * (1.0 - too_old)
        metrics.update({"stale_tokens": ((stale > 0).to(m.dtype) * m).sum(), "stale_masked_tokens": too_old.sum(),
                        "is_weight_sum": (weights * m).sum()})
    return weights.detach(), metrics
