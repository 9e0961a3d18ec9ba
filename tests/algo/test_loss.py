"""Policy losses against explicit-loop references; gradient signs and clip edges."""
import itertools
import math

import pytest
import torch

from megatron_sgpo.algo.loss import LossConfig, kl_penalty, policy_loss

D = torch.float64  # explicit, so no global default dtype leaks into other tests


def reference_loss(logp, old, adv, mask, norm, cfg, ref=None, ent=None, w=None, tw=None):
    """Naive per-token loops over Python floats."""
    logp, old, mask = logp.tolist(), old.tolist(), mask.tolist()
    ref = ref.tolist() if ref is not None else None
    tw = tw.tolist() if tw is not None else None
    ent = ent.tolist() if ent is not None else None
    lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
    clip = lambda x: min(max(x, lo), hi)
    total = 0.0
    for b in range(len(logp)):
        a = float(adv[b])
        toks = [t for t in range(len(logp[b])) if mask[b][t]]
        if not toks:
            continue
        s = math.exp(sum(logp[b][t] - old[b][t] for t in toks) / len(toks))
        seq_sum = 0.0
        for t in toks:
            r = math.exp(logp[b][t] - old[b][t])
            if cfg.kind == "ppo":
                obj = min(r * a, clip(r) * a)
                if cfg.dual_clip is not None and a < 0:
                    obj = max(obj, cfg.dual_clip * a)
                loss = -obj
            elif cfg.kind == "gspo":
                loss = -min(s * a, clip(s) * a)
            else:
                loss = -clip(r) * a * logp[b][t]
            if tw is not None:
                loss *= tw[b][t]
            if ref is not None and cfg.kl_in == "loss":
                d = ref[b][t] - logp[b][t]
                kl = -d if cfg.kl_type == "k1" else math.exp(d) - d - 1
                loss += cfg.kl_coef * kl
            if ent is not None:
                loss -= cfg.entropy_coef * ent[b][t]
            if w is not None:
                loss *= float(w[b])
            seq_sum += loss
        total += seq_sum if cfg.agg == "token_mean" else seq_sum / len(toks)
    return total / norm


def batch(seed=0, b=4, t=6):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=g, dtype=D) * 2
    old = logp + (torch.rand(b, t, generator=g, dtype=D) - 0.5) * 0.8
    ref = logp + (torch.rand(b, t, generator=g, dtype=D) - 0.5) * 0.4
    ent = torch.rand(b, t, generator=g, dtype=D)
    mask = torch.zeros(b, t, dtype=D)
    for i, n in enumerate([6, 3, 1, 4][:b]):
        mask[i, :n] = 1
    adv = torch.tensor([1.5, -0.7, 0.3, -2.0][:b], dtype=D)
    w = torch.tensor([0.5, 1.5, 1.0, 2.0][:b], dtype=D)
    return logp, old, ref, ent, mask, adv, w


def token_weights(b=4, t=6):
    """Mismatch-correction weights in [0, 2) for the policy-gradient term."""
    return torch.rand(b, t, generator=torch.Generator().manual_seed(11), dtype=D) * 2


CASES = [
    LossConfig(kind="ppo", eps_low=0.2, eps_high=0.28),
    LossConfig(kind="ppo", eps_low=0.1, eps_high=0.1, dual_clip=1.2),
    LossConfig(kind="gspo", eps_low=0.05, eps_high=0.08),
    LossConfig(kind="cispo", eps_low=1.0, eps_high=0.1),
]


@pytest.mark.parametrize("cfg, agg, extras", list(itertools.product(CASES, ["token_mean", "seq_mean"], [False, True])))
def test_matches_loop_reference(cfg, agg, extras):
    cfg = LossConfig(**{**cfg.__dict__, "agg": agg, "kl_coef": 0.1 if extras else 0.0, "entropy_coef": 0.01 if extras else 0.0})
    logp, old, ref, ent, mask, adv, w = batch()
    norm = 17.0
    tw = token_weights()
    kw = dict(ref_logp=ref, entropy=ent, sample_weights=w, token_weights=tw) if extras else {}
    loss, metrics = policy_loss(logp, old, adv, mask, norm, cfg, **kw)
    expect = reference_loss(logp, old, adv, mask, norm, cfg, *((ref, ent, w, tw) if extras else ()))
    assert loss.item() == pytest.approx(expect, rel=1e-10, abs=1e-12)
    assert metrics["tokens"].item() == 14 and metrics["seqs"].item() == 4


def test_k1_kl_reference():
    cfg = LossConfig(kl_coef=0.5, kl_type="k1")
    logp, old, ref, _, mask, adv, _ = batch(seed=3)
    loss, m = policy_loss(logp, old, adv, mask, 5.0, cfg, ref_logp=ref)
    assert loss.item() == pytest.approx(reference_loss(logp, old, adv, mask, 5.0, cfg, ref=ref), rel=1e-10)
    assert m["kl_sum"].item() == pytest.approx(((logp - ref) * mask).sum().item())
    k3 = kl_penalty(torch.tensor([0.0, -1.0], dtype=D), torch.tensor([0.0, -2.0], dtype=D), "k3")
    assert k3.tolist() == pytest.approx([0.0, math.exp(-1) + 1 - 1])


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([-1.0, -0.5, -3.0], dtype=D), torch.tensor([-2.0, -0.5, 12.0], dtype=D)
    assert kl_penalty(logp, ref, "k2").tolist() == pytest.approx([0.5, 0.0, 0.5 * 15.0**2])
    k3 = [math.exp(-1.0) + 1.0 - 1.0, 0.0, math.exp(15.0) - 15.0 - 1.0]
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx(k3)
    assert kl_penalty(logp, ref, "low_var_kl").tolist() == pytest.approx([k3[0], 0.0, 10.0])  # clamped at 10


def test_kl_in_the_reward_is_reported_but_not_in_the_loss():
    logp, old, ref, _, mask, adv, _ = batch(seed=5)
    in_reward = LossConfig(kl_coef=0.5, kl_in="reward")
    loss, m = policy_loss(logp, old, adv, mask, 5.0, in_reward, ref_logp=ref)
    plain, _ = policy_loss(logp, old, adv, mask, 5.0, LossConfig())
    assert loss.item() == pytest.approx(plain.item(), rel=1e-12)
    assert m["kl_sum"].item() == pytest.approx((kl_penalty(logp, ref, "k3") * mask).sum().item())


def grad_of(kind, ratio, adv, **kw):
    logp = torch.tensor([[-1.0]], dtype=D, requires_grad=True)
    old = torch.tensor([[-1.0 - math.log(ratio)]], dtype=D)
    cfg = LossConfig(kind=kind, **kw)
    loss, _ = policy_loss(logp, old, torch.tensor([adv], dtype=D), torch.ones(1, 1, dtype=D), 1.0, cfg)
    loss.backward()
    return logp.grad.item()


@pytest.mark.parametrize("kind", ["ppo", "gspo", "cispo"])
def test_gradient_sign_follows_advantage(kind):
    # descending the loss raises log-prob of positive-advantage tokens, lowers negative ones
    assert grad_of(kind, 1.0, 1.0) < 0
    assert grad_of(kind, 1.0, -1.0) > 0


@pytest.mark.parametrize("kind", ["ppo", "gspo"])
def test_zero_gradient_beyond_clip_edges(kind):
    kw = dict(eps_low=0.2, eps_high=0.28)
    assert grad_of(kind, 1.5, 1.0, **kw) == 0.0  # above 1 + eps_high with A > 0
    assert grad_of(kind, 0.5, -1.0, **kw) == 0.0  # below 1 - eps_low with A < 0
    assert grad_of(kind, 1.2, 1.0, **kw) == pytest.approx(-1.2)  # inside: d(-r A)/dlogp = -r A
    assert grad_of(kind, 0.5, 1.0, **kw) == pytest.approx(-0.5)  # the clip does not bind on this side
    assert grad_of(kind, 1.25, -1.0, **kw) == pytest.approx(1.25)


def test_dual_clip_bounds_negative_advantage():
    kw = dict(eps_low=0.2, eps_high=0.2, dual_clip=3.0)
    assert grad_of("ppo", 5.0, -1.0, **kw) == 0.0
    assert grad_of("ppo", 2.0, -1.0, **kw) == pytest.approx(2.0)
    assert grad_of("ppo", 5.0, -1.0, eps_low=0.2, eps_high=0.2) == pytest.approx(5.0)


def test_cispo_keeps_gradient_with_truncated_weight():
    # weight is clipped to 1.1 and detached: grad = -1.1 * A for every token
    assert grad_of("cispo", 3.0, 2.0, eps_low=1.0, eps_high=0.1) == pytest.approx(-2.2)
    assert grad_of("cispo", 0.3, 2.0, eps_low=1.0, eps_high=0.1) == pytest.approx(-0.6)


def test_micro_batch_and_rank_split_gives_global_mean():
    logp, old, ref, ent, mask, adv, w = batch(seed=7)
    for agg in ("token_mean", "seq_mean"):
        cfg = LossConfig(kind="ppo", agg=agg, kl_coef=0.05)
        norm = mask.sum() if agg == "token_mean" else torch.tensor(4.0, dtype=D)
        whole_p = logp.clone().requires_grad_(True)
        whole, _ = policy_loss(whole_p, old, adv, mask, norm, cfg, ref_logp=ref)
        whole.backward()
        part_p = logp.clone().requires_grad_(True)
        parts = sum(
            policy_loss(part_p[i : i + 1], old[i : i + 1], adv[i : i + 1], mask[i : i + 1], norm, cfg, ref_logp=ref[i : i + 1])[0]
            for i in range(4)
        )
        parts.backward()
        assert parts.item() == pytest.approx(whole.item(), rel=1e-12)
        assert torch.allclose(part_p.grad, whole_p.grad)


def test_clip_metrics_count_tokens():
    logp = torch.zeros(1, 4, dtype=D)
    old = torch.log(torch.tensor([[1 / 1.5, 1.0, 1 / 0.5, 1.0]], dtype=D))  # ratios 1.5, 1, 0.5, 1
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=D)
    _, m = policy_loss(logp, old, torch.tensor([1.0], dtype=D), mask, 1.0, LossConfig(eps_low=0.2, eps_high=0.2))
    assert m["clipped_tokens"].item() == 1  # only ratio 1.5 binds for A > 0
    assert m["ratio_sum"].item() == pytest.approx(3.0)
    _, m = policy_loss(logp, old, torch.tensor([-1.0], dtype=D), mask, 1.0, LossConfig(eps_low=0.2, eps_high=0.2))
    assert m["clipped_tokens"].item() == 1  # only ratio 0.5 binds for A < 0


def test_errors():
    logp, old, ref, ent, mask, adv, w = batch()
    with pytest.raises(ValueError, match="kl_coef > 0 with kl_in='loss' needs ref_logp"):
        policy_loss(logp, old, adv, mask, 1.0, LossConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="entropy_coef != 0 needs the entropy tensor"):
        policy_loss(logp, old, adv, mask, 1.0, LossConfig(entropy_coef=0.1))
    with pytest.raises(ValueError, match="normalizer must be > 0"):
        policy_loss(logp, old, adv, mask, 0, LossConfig())
    with pytest.raises(ValueError, match=r"advantages must be \[B\]=4"):
        policy_loss(logp, old, adv[:2], mask, 1.0, LossConfig())
    with pytest.raises(ValueError, match="mask must have the shape of logp"):
        policy_loss(logp, old, adv, mask[:, :2], 1.0, LossConfig())
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        LossConfig(dual_clip=1.0)
    with pytest.raises(ValueError, match="dual_clip applies only to kind='ppo'"):
        LossConfig(kind="gspo", dual_clip=2.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        LossConfig(kind="reinforce")
