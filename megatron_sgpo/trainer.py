"""The sGPO / GRPO / DAPO training loop (``sgpo train``).

profile → plan → for each step: rollout (per-prompt n) → rewards → advantages → selection →
DP-aware batches → megatron update → weight sync → ledger, logs, evaluation, checkpoint.
Rollouts run on global rank 0 (where the engine lives) and their results are broadcast; every rank
then derives the same batch plan and trains its share.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch.distributed as dist
from tqdm import tqdm

from megatron_sgpo import run_state
from megatron_sgpo.algo import advantage, grsp, ledger as ledger_mod, select
from megatron_sgpo.algo.plan import Plan, fixed_plan, make_plan
from megatron_sgpo.algo.posterior import PosteriorTracker
from megatron_sgpo.algo.profile import PromptProfile
from megatron_sgpo.batch import CostModel, ParallelLayout
from megatron_sgpo.config import RunConfig, save_config
from megatron_sgpo.platform.dist import init_parallel
from megatron_sgpo.profiling import evaluate, run_profiling, sampling
from megatron_sgpo.setup_run import RunParts, build_parts
from megatron_sgpo.train.policy import NonFiniteLossError
from megatron_sgpo.train.update import StepSamples, update
from megatron_sgpo.weights.reshard import sync_weights

MAX_BAD_STEPS = 3


class RankZeroError(RuntimeError):
    """Work that runs on rank 0 only (profiling, rollout, evaluation) failed; every rank raises it."""


def _on_rank0(what: str, fn):
    """Run ``fn`` on global rank 0 and broadcast its result, or its error, so no rank waits forever."""
    payload = None
    if dist.get_rank() == 0:
        try:
            payload = ("ok", fn())
        except Exception as exc:  # re-raised on every rank below, with the original message
            payload = ("error", f"{type(exc).__name__}: {exc}")
    box = [payload]
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise RankZeroError(f"{what} failed: {value}")
    return value


def _report(summary: dict, out_dir: str) -> str:
    """The end-of-run summary a person reads: accuracy over the run and compute by phase."""
    lines = [f"{summary['mode']}: {summary['steps']} steps, outputs in {out_dir}"]
    for e in summary["evals"]:
        levels = " ".join(f"L{k[len('accuracy_level'):]}={v:.2f}" for k, v in e.items() if k.startswith("accuracy_level"))
        lines.append(f"  accuracy {e['tag']:>8} (step {e['step']:>3}): {e['accuracy']:.3f}  {levels}")
    total = summary["total_flops"] or 1
    for phase, v in summary["compute"].items():
        lines.append(f"  compute {phase:>9}: {v['flops']:.3g} FLOPs ({100 * v['flops'] / total:4.1f}%), {v['tokens']} tokens")
    lines.append(f"  compute     total: {summary['total_flops']:.3g} FLOPs")
    return "\n".join(lines)


class Trainer:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.out = cfg.run.output_dir
        self.parts: RunParts = build_parts(cfg, init_parallel)
        self.rank = dist.get_rank()
        self.ledger = ledger_mod.ComputeLedger()
        self.step = 0
        self.bad_steps = 0
        self.evals: list[dict] = []
        self.plan: Plan | None = None
        self.tracker: PosteriorTracker | None = None
        self.seen: set = set()  # prompts whose posterior has absorbed training (or re-profiling) rewards
        self.writer = None
        if self.rank == 0:
            os.makedirs(self.out, exist_ok=True)
            save_config(cfg, os.path.join(self.out, "config.yaml"))
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(self.out, "tb"))

    # ------------------------------------------------------------------ plan
    def _make_plan(self) -> None:
        cfg, parts = self.cfg, self.parts
        ids = [it.id for it in parts.items]
        if cfg.run.mode == "sgpo":
            profiles, cost = _on_rank0("profiling", lambda: run_profiling(parts, cfg, self.out))
            self.ledger.add("profiling", cost[0], cost[1])  # booked on every rank; only rank 0's is saved
            self.plan = make_plan(profiles, cfg.plan, cfg.run.seed)
            if cfg.online.online:
                self.tracker = PosteriorTracker.from_profiles(profiles, cfg.plan, cfg.online)
        else:
            self.plan = fixed_plan(ids, cfg.train.grpo_n, cfg.run.seed)

    def _steps(self):
        t = self.cfg.train
        steps = list(self.plan.schedule(t.prompts_per_step, t.epochs))
        if len(steps) < t.steps and self.rank == 0:
            tqdm.write(f"the plan holds {len(self.plan.entries)} prompts = {len(steps)} steps of {t.prompts_per_step} "
                       f"over {t.epochs} epoch(s); train.steps={t.steps} is capped there")
        return steps[: t.steps]

    # ------------------------------------------------------------------ one step
    def _rollout(self, step_entries) -> tuple[StepSamples | None, dict]:
        cfg, parts = self.cfg, self.parts
        items = [parts.by_id[pid] for pid, _ in step_entries]
        ns = [self.tracker.group_size(pid) if self.tracker and pid in self.seen else n for pid, n in step_entries]
        groups = parts.runner.run(items, ns, sampling(cfg, seed=cfg.run.seed * 100003 + self.step))
        tokens, flops = parts.runner.cost(groups)
        self.ledger.add("rollout", tokens, flops)
        seqs, plens, gids, rewards = [], [], [], []
        for g, group in enumerate(groups):
            if self.tracker:
                self.tracker.update(group.item.id, group.rewards)
                self.seen.add(group.item.id)
            for c, r in zip(group.completions, group.rewards):
                seqs.append(group.prompt_ids + list(c.token_ids))
                plens.append(len(group.prompt_ids))
                gids.append(g)
                rewards.append(r)
        rewards_a, gids_a = np.array(rewards), np.array(gids)
        adv = self._advantages(groups, rewards_a, gids_a)
        stats = {"reward_mean": float(rewards_a.mean()), "accuracy": float((rewards_a >= 1.0).mean()),
                 "samples": len(seqs), "group_sizes": ns, "prompts": [g.item.id for g in groups]}
        for level in sorted({g.item.meta.get("level") for g in groups} - {None}):
            lv = [r for g in groups if g.item.meta.get("level") == level for r in g.rewards]
            stats[f"pass_rate/level{level}"] = float(np.mean([r >= 1.0 for r in lv]))
        keep, weights = np.arange(len(seqs)), None
        if cfg.run.mode == "dapo" or cfg.train.selection == "zero_variance":
            keep = np.flatnonzero(select.zero_variance_filter(rewards_a, gids_a).keep)
        if cfg.train.selection == "cost_aware" and len(keep):  # q ∝ |A|/sqrt(len) over what is left
            costs = select.sequence_costs(plens, [len(s) - p for s, p in zip(seqs, plens)])
            pick = select.cost_aware_sample(adv[keep], costs[keep], cfg.train.cost_aware_draws or len(keep),
                                            np.random.default_rng([cfg.run.seed, self.step]), cfg.train.cost_aware_mix)
            keep, weights = keep[pick.indices], pick.weights
        stats["trained_samples"] = int(len(keep))
        if len(keep) == 0:
            return None, stats
        samples = StepSamples([seqs[i] for i in keep], [plens[i] for i in keep], gids_a[keep], adv[keep], weights)
        return samples, stats

    def _advantages(self, groups, rewards: np.ndarray, gids: np.ndarray) -> np.ndarray:
        """Per-group advantages, with the GRSP segment-length penalty on the reward or the advantage."""
        g = self.cfg.grsp
        if g.coef == 0:
            return advantage.group_advantages(rewards, gids)

        def penalised(values: np.ndarray) -> np.ndarray:
            out = values.astype(np.float64).copy()
            for i, group in enumerate(groups):
                lps = [c.logprobs for c in group.completions]
                out[gids == i] = grsp.apply_grsp(out[gids == i], group.texts, g, lps)
            return out

        if g.target == "reward":
            return advantage.group_advantages(penalised(rewards), gids)
        return penalised(advantage.group_advantages(rewards, gids))

    def _reprofile(self, upcoming) -> None:
        """Online mode: sample k answers for the prompts of the next K steps and fold them into their
        posteriors, so their group sizes follow the current policy (rank 0; booked as profiling)."""
        ids = [pid for entries in upcoming for pid, _ in entries]
        items = [self.parts.by_id[pid] for pid in ids]
        groups = self.parts.runner.run(items, [self.cfg.profile.k] * len(items),
                                       sampling(self.cfg, seed=self.cfg.run.seed * 65537 + self.step))
        tokens, flops = self.parts.runner.cost(groups)
        self.ledger.add("profiling", tokens, flops)
        for group in groups:
            self.tracker.update(group.item.id, group.rewards)
            self.seen.add(group.item.id)

    def _account_training(self, samples: StepSamples) -> None:
        dims = self.parts.dims
        lens = [len(s) for s in samples.sequences]
        self.ledger.add("logprob", sum(lens), sum(ledger_mod.logprob_flops(dims, n) for n in lens))
        self.ledger.add("training", sum(lens), sum(ledger_mod.training_flops(dims, n) for n in lens))

    def train_one(self, steps: list) -> dict:
        cfg, parts = self.cfg, self.parts
        step_entries = steps[self.step]
        self.ledger.start_step(self.step)
        t0 = time.time()

        def rollout():
            if self.tracker and self.tracker.due_for_reprofile(self.step):
                self._reprofile(steps[self.step : self.step + cfg.online.reprofile_every])
            return self._rollout(step_entries)

        samples, stats = _on_rank0(f"rollout of step {self.step + 1}", rollout)
        release = cfg.rollout.release_memory and parts.engine is not None
        if release:  # colocated: the engine's weights and KV cache make room for training
            parts.engine.release_memory()
        t1 = time.time()
        if samples is not None:
            layout = ParallelLayout(dp=parts.dp, pp=cfg.model.parallel.pp, vpp=cfg.model.parallel.vpp,
                                    tp=cfg.model.parallel.tp, sequence_parallel=cfg.model.parallel.sequence_parallel)
            try:
                metrics = update(parts.policy, samples, cfg.loss, layout, parts.dp_rank,
                                 cfg.train.max_tokens_per_micro_batch, parts.cost, cfg.rollout.temperature)
                stats.update({f"train/{k}": v for k, v in metrics.items()})
                self.bad_steps = 0
            except NonFiniteLossError as exc:
                self.bad_steps += 1
                stats["skipped"] = str(exc)
                if self.rank == 0:
                    tqdm.write(f"step {self.step}: {exc} ({self.bad_steps} in a row)")
                if self.bad_steps >= MAX_BAD_STEPS:
                    raise RuntimeError(f"{MAX_BAD_STEPS} consecutive steps had a NaN/inf loss; last checkpoint kept "
                                       f"in {self.out}/checkpoints") from exc
            if self.rank == 0:
                self._account_training(samples)
        t2 = time.time()
        if release:
            parts.engine.resume_memory()
        sync_weights(parts.policy.modules(), parts.mapping, parts.engine, version=self.step + 1,
                     bucket_bytes=cfg.rollout.bucket_mb * 2**20)
        stats.update({"time/rollout": t1 - t0, "time/train": t2 - t1, "time/sync": time.time() - t2})
        self.step += 1
        return stats

    # ------------------------------------------------------------------ logging / state
    def _log(self, stats: dict) -> None:
        """TensorBoard scalars, and one JSON line per step in steps.jsonl (what ran, for audits and tests)."""
        if self.writer is None:
            return
        with open(os.path.join(self.out, "steps.jsonl"), "a") as f:
            f.write(json.dumps({"step": self.step, **stats}) + "\n")
        for key, value in stats.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, self.step)
        if stats.get("group_sizes"):
            self.writer.add_histogram("group_size", np.array(stats["group_sizes"]), self.step)
        for phase, tot in self.ledger.phase_totals().items():
            self.writer.add_scalar(f"compute/{phase}_flops", tot["flops"], self.step)
            self.writer.add_scalar(f"compute/{phase}_tokens", tot["tokens"], self.step)
        self.writer.add_scalar("compute/total_flops", self.ledger.total_flops, self.step)

    def _state(self) -> dict:
        return {"step": self.step, "plan": self.plan.to_dict(), "ledger": self.ledger.to_dict(),
                "posteriors": self.tracker.to_dict() if self.tracker else None, "seen": sorted(self.seen),
                "bad_steps": self.bad_steps,
                "evals": self.evals}

    def _resume(self) -> bool:
        path = run_state.latest(self.out)
        if path is None:
            return False
        state = run_state.load(path, self.parts.policy)
        self.step, self.bad_steps, self.evals = state["step"], state["bad_steps"], state["evals"]
        self.plan = Plan.from_dict(state["plan"])
        self.ledger = ledger_mod.ComputeLedger.from_dict(state["ledger"])
        if state["posteriors"]:
            self.tracker = PosteriorTracker.from_dict(state["posteriors"])
            self.seen = set(state["seen"])
        sync_weights(self.parts.policy.modules(), self.parts.mapping, self.parts.engine, version=self.step,
                     bucket_bytes=self.cfg.rollout.bucket_mb * 2**20)
        if self.rank == 0:
            tqdm.write(f"resumed from {path} at step {self.step}")
        return True

    def _evaluate(self, tag: str) -> None:
        if self.parts.eval_items:
            result = _on_rank0(f"evaluation ({tag})", lambda: evaluate(self.parts, self.cfg))
            self.evals.append({"step": self.step, "tag": tag, "total_flops": self.ledger.total_flops, **result})
            if self.writer:
                for key, value in result.items():
                    self.writer.add_scalar(f"eval/{key}", value, self.step)

    # ------------------------------------------------------------------ main
    def run(self) -> dict:
        cfg = self.cfg
        if not self._resume():
            self._make_plan()
            self._evaluate("before")
        steps = self._steps()
        bar = tqdm(total=len(steps), initial=self.step, desc=cfg.run.mode, disable=self.rank != 0)
        while self.step < len(steps):
            stats = self.train_one(steps)
            self._log(stats)
            bar.update(1)
            bar.set_postfix(reward=f"{stats['reward_mean']:.2f}", n=stats["samples"])
            if cfg.train.eval_every and self.step % cfg.train.eval_every == 0 and self.step < len(steps):
                self._evaluate("periodic")
            if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                run_state.save(self.out, self.step, self.parts.policy, self._state())
        bar.close()
        self._evaluate("after")
        return self._finish(len(steps))

    def _finish(self, num_steps: int) -> dict:
        summary = {"mode": self.cfg.run.mode, "steps": num_steps, "plan_counts": vars(self.plan.counts),
                   "compute": self.ledger.phase_totals(), "total_flops": self.ledger.total_flops,
                   "evals": self.evals}
        if self.rank == 0:
            run_state.write_json_atomic(os.path.join(self.out, "summary.json"), summary)
            self.writer.close()
            print(_report(summary, self.out))
        return summary
