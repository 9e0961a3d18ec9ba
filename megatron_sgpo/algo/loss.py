"""Policy losses on [B, T] tensors: PPO clip (DAPO clip-higher, dual clip), GSPO, CISPO, KL, entropy.

Normalisation is global: the caller passes the token (or sequence) count of the
whole step across all data-parallel ranks, and each micro-batch returns its sum
divided by it, so summing micro-batches and ranks gives exactly the global mean
whatever the partition.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from megatron_sgpo.choices import check_choices

KlType = Literal["k1", "k2", "k3", "low_var_kl"]
KL_TYPES = typing.get_args(KlType)
LOW_VAR_KL_BOUND = 10.0


@dataclass(frozen=True)
class LossConfig:
    """``kind``: ppo | gspo | cispo. Ratios are clipped to [1 - eps_low, 1 + eps_high].

    ``dual_clip`` c > 1 bounds the PPO loss of negative-advantage tokens at -c*A.
    For CISPO, eps_low >= 1 removes the lower truncation (MiniMax-M1 setting).
    ``kl_coef`` > 0 keeps the policy near the frozen reference: ``kl_in="loss"`` adds kl_coef * KL per token to
    the loss; ``kl_in="reward"`` subtracts kl_coef * (the sequence's summed KL) from its reward before the group
    advantages are computed.
    """

    kind: Literal["ppo", "gspo", "cispo"] = "ppo"
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: Optional[float] = None
    kl_coef: float = 0.0
    kl_type: KlType = "k3"
    kl_in: Literal["loss", "reward"] = "loss"
    entropy_coef: float = 0.0
    agg: Literal["token_mean", "seq_mean"] = "token_mean"

    def __post_init__(self) -> None:
        check_choices(self)
        if self.eps_low < 0 or self.eps_high < 0:
            raise ValueError(f"eps_low and eps_high must be >= 0, got {self.eps_low}, {self.eps_high}")
        if self.dual_clip is not None:
            if self.kind != "ppo":
                raise ValueError("dual_clip applies only to kind='ppo'")
            if self.dual_clip <= 1.0:
                raise ValueError(f"dual_clip must be > 1, got {self.dual_clip}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kl_type: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) on tokens sampled from pi (Schulman's k1, k2, k3).

    k1 = logp - ref (unbiased, high variance, can be negative); k2 = (logp - ref)^2 / 2; k3 = e^{ref-logp} -
    (ref - logp) - 1 (unbiased, non-negative, low variance); low_var_kl = k3 clamped to [-10, 10], which keeps a
    single wildly off token from dominating the step.
    """
    if kl_type == "k1":
        return logp - ref_logp
    if kl_type == "k2":
        return 0.5 * (logp - ref_logp) ** 2
    if kl_type in ("k3", "low_var_kl"):
        d = ref_logp - logp
        k3 = torch.exp(d) - d - 1.0
        return k3 if kl_type == "k3" else torch.clamp(k3, -LOW_VAR_KL_BOUND, LOW_VAR_KL_BOUND)
    raise ValueError(f"kl_type must be one of {KL_TYPES}, got {kl_type!r}")


def _check_inputs(logp, old_logp, advantages, mask, normalizer, ref_logp, entropy, sample_weights,
                  token_weights) -> None:
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got shape {tuple(logp.shape)}")
    for name, t in (("old_logp", old_logp), ("mask", mask), ("ref_logp", ref_logp), ("entropy", entropy),
                    ("token_weights", token_weights)):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name} must have the shape of logp {tuple(logp.shape)}, got {tuple(t.shape)}")
    b = logp.shape[0]
    if advantages.shape != (b,):
        raise ValueError(f"advantages must be [B]={b}, got shape {tuple(advantages.shape)}")
    if sample_weights is not None and sample_weights.shape != (b,):
        raise ValueError(f"sample_weights must be [B]={b}, got shape {tuple(sample_weights.shape)}")
    if float(normalizer) <= 0:
        raise ValueError(f"normalizer must be > 0, got {float(normalizer)}")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    normalizer: float | torch.Tensor,
    cfg: LossConfig,
    ref_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    sample_weights: torch.Tensor | None = None,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one micro-batch: sum of per-token (token_mean) or per-sequence (seq_mean) loss / normalizer.

    Per-token loss = token_weights * policy term + kl_coef * KL - entropy_coef * entropy, all
    multiplied by the sequence's ``sample_weights`` (importance weights of a
    cost-aware selection reweight the whole sampled objective). ``token_weights``
    are the train–inference mismatch correction (algo/mismatch.py) of the
    policy-gradient term. A sequence's
    loss under seq_mean is the mean of its tokens' losses; sequences without
    response tokens contribute nothing. GSPO's sequence loss is given to each of
    its tokens, so under token_mean a sequence weighs by its length.
    Metrics are detached sums (tokens, seqs, clipped_tokens, ratio_sum, ...) to
    all-reduce before dividing.
    """
    _check_inputs(logp, old_logp, advantages, mask, normalizer, ref_logp, entropy, sample_weights, token_weights)
    kl_in_loss = cfg.kl_coef > 0 and cfg.kl_in == "loss"
    if kl_in_loss and ref_logp is None:
        raise ValueError("kl_coef > 0 with kl_in='loss' needs ref_logp")
    if cfg.entropy_coef != 0 and entropy is None:
        raise ValueError("entropy_coef != 0 needs the entropy tensor")
    m = mask.to(logp.dtype)
    old = old_logp.detach()
    adv = advantages.detach().to(logp.dtype)[:, None]
    seq_len = m.sum(dim=1)
    safe_len = seq_len.clamp(min=1.0)
    log_ratio = logp - old
    ratio = torch.exp(log_ratio)
    lo, hi = 1.0 - cfg.eps_low, 1.0 + cfg.eps_high
    dual_clipped = torch.zeros_like(m, dtype=torch.bool)

    if cfg.kind == "ppo":
        pg = torch.maximum(-ratio * adv, -torch.clamp(ratio, lo, hi) * adv)
        clipped = ((adv > 0) & (ratio > hi)) | ((adv < 0) & (ratio < lo))
        if cfg.dual_clip is not None:
            bound = -cfg.dual_clip * adv
            dual_clipped = (adv < 0) & (pg > bound)
            pg = torch.where(adv < 0, torch.minimum(pg, bound), pg)
    elif cfg.kind == "gspo":
        seq_ratio = torch.exp((log_ratio * m).sum(dim=1) / safe_len)[:, None]
        a = adv
        pg = torch.maximum(-seq_ratio * a, -torch.clamp(seq_ratio, lo, hi) * a).expand_as(logp)
        clipped = (((a > 0) & (seq_ratio > hi)) | ((a < 0) & (seq_ratio < lo))).expand_as(logp)
    else:  # cispo
        weight = torch.clamp(ratio, min=lo, max=hi).detach()
        pg = -weight * adv * logp
        clipped = (ratio < lo) | (ratio > hi)

    tok_loss = pg if token_weights is None else pg * token_weights.detach().to(logp.dtype)
    metrics: dict[str, torch.Tensor] = {}
    if ref_logp is not None:
        kl = kl_penalty(logp, ref_logp.detach(), cfg.kl_type)
        if kl_in_loss:
            tok_loss = tok_loss + cfg.kl_coef * kl
        metrics["kl_sum"] = (kl * m).sum().detach()
    if entropy is not None:
        tok_loss = tok_loss - cfg.entropy_coef * entropy
        metrics["entropy_sum"] = (entropy * m).sum().detach()
    if sample_weights is not None:
        tok_loss = tok_loss * sample_weights.detach().to(logp.dtype)[:, None]

    if cfg.agg == "token_mean":
        total = (tok_loss * m).sum()
    else:
        total = ((tok_loss * m).sum(dim=1) / safe_len).sum()
    loss = total / normalizer

    metrics.update(
        tokens=m.sum().detach(),
        seqs=(seq_len > 0).sum().to(logp.dtype).detach(),
        pg_loss_sum=(pg * m).sum().detach(),
        clipped_tokens=(clipped.to(logp.dtype) * m).sum().detach(),
        dual_clipped_tokens=(dual_clipped.to(logp.dtype) * m).sum().detach(),
        ratio_sum=(ratio * m).sum().detach(),
    )
    return loss, metrics
