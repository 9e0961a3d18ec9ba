"""The sGPO / GRPO / DAPO training loop (``sgpo train``).

profile → plan → for each step: rollout (per-prompt n) → rewards → samples (advantages, GRSP,
selection) → DP-aware batches → megatron update → weight sync → ledger, logs, evaluation, checkpoint.
Rollouts run on global rank 0 (where the engine lives) and their results are broadcast; every rank
then derives the same batch plan and trains its share.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch.distributed as dist
from tqdm import tqdm

from megatron_sgpo.algo.allocate import budgeted_sizes
from megatron_sgpo.algo.ledger import ComputeLedger
from megatron_sgpo.algo.plan import Plan, fixed_plan, make_plan
from megatron_sgpo.algo.posterior import PosteriorTracker
from megatron_sgpo.algo.refill import refill
from megatron_sgpo.algo.samples import StepSamples, build_step_samples
from megatron_sgpo.config import RunConfig, save_config
from megatron_sgpo.loop import checkpoint
from megatron_sgpo.loop.april import PlanRollouts
from megatron_sgpo.loop.build import RunParts, build_parts
from megatron_sgpo.loop.evaluate import evaluate
from megatron_sgpo.loop.metrics import RunLog, report, rollout_stats
from megatron_sgpo.loop.profiling import run_profiling
from megatron_sgpo.model.flops import logprob_flops, training_flops
from megatron_sgpo.platform.dist import run_on_rank0
from megatron_sgpo.train.policy import NonFiniteLossError
from megatron_sgpo.train.update import update
from megatron_sgpo.weights.sync import WeightSync

MAX_BAD_STEPS = 3


class Trainer:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.out = cfg.run.output_dir
        if cfg.train.checkpoint_every:
            checkpoint.prepare_writer()  # before the model exists
        self.parts: RunParts = build_parts(cfg)
        self.rank = dist.get_rank()
        self.ledger = ComputeLedger()
        self.step = 0
        self.bad_steps = 0
        self.evals: list[dict] = []
        self.plan: Plan | None = None
        self.tracker: PosteriorTracker | None = None
        self.seen: set = set()  # prompts whose posterior has absorbed training (or re-profiling) rewards
        self._refilled: set = set()  # prompts drawn by this step's refill rounds
        self.april: PlanRollouts | None = None  # rank 0, with rollout.partial
        self._april_state: dict | None = None  # its carried groups, from the checkpoint resumed from
        if self.rank == 0:
            os.makedirs(self.out, exist_ok=True)
            save_config(cfg, os.path.join(self.out, "config.yaml"))
        self.log = RunLog(self.out, enabled=self.rank == 0)
        r = cfg.rollout
        self.weights = WeightSync(self.parts.policy.modules(), self.parts.mapping, self.parts.engine, r.weight_sync,
                                  r.bucket_mb * 2**20, disk_dir=os.path.join(self.out, "weights"),
                                  side_dir=self.parts.hf_path)

    # ------------------------------------------------------------------ plan
    def _make_plan(self) -> None:
        cfg, parts = self.cfg, self.parts
        if cfg.run.mode == "sgpo":
            profiles, cost = run_on_rank0("profiling", lambda: run_profiling(parts, cfg, self.out))
            self.ledger.add("profiling", cost[0], cost[1])  # booked on every rank; only rank 0's is saved
            self.plan = make_plan(profiles, cfg.plan, cfg.run.seed)
            if cfg.online.enabled:
                self.tracker = PosteriorTracker.from_profiles(profiles, cfg.plan, cfg.online)
        else:
            self.plan = fixed_plan([it.id for it in parts.items], cfg.plan.fixed_n, cfg.run.seed)

    def _steps(self):
        t = self.cfg.train
        steps = list(self.plan.schedule(t.prompts_per_step, t.epochs))
        if len(steps) < t.steps and self.rank == 0:
            tqdm.write(f"the plan holds {len(self.plan.entries)} prompts = {len(steps)} steps of {t.prompts_per_step} "
                       f"over {t.epochs} epoch(s); train.steps={t.steps} is capped there")
        return steps[: t.steps]

    # ------------------------------------------------------------------ one step
    def _group_sizes(self, step_entries, budgeted: bool = True) -> list[int]:
        """The plan's sizes, or with online posteriors the sizes the current posteriors give (split over the step
        budget with ``plan.allocation=budgeted``, unless ``budgeted`` is False, as for refill prompts)."""
        if not self.tracker:
            return [n for _, n in step_entries]
        plan = self.cfg.plan
        if budgeted and plan.allocation == "budgeted":
            return budgeted_sizes([self.tracker.posterior(pid) for pid, _ in step_entries], plan.step_rollout_budget,
                                  plan.n_min, plan.n_max)
        return [self.tracker.group_size(pid) if pid in self.seen else n for pid, n in step_entries]

    def _refill_draw(self, step_entries, rnd: int, count: int) -> list:
        """``count`` more prompts of the plan for this step's refill round ``rnd`` (seeded by run, step, round),
        none already generated this step, at their plan sizes."""
        used = {pid for pid, _ in step_entries} | self._refilled
        pool = [e for e in self.plan.entries if e.prompt_id not in used]
        rng = np.random.default_rng([self.cfg.run.seed, self.step, 7, rnd])
        picked = [pool[i] for i in rng.permutation(len(pool))[:count]]
        self._refilled |= {e.prompt_id for e in picked}
        if not picked:
            return []
        ns = self._group_sizes([(e.prompt_id, e.n) for e in picked], budgeted=False)
        seed = (self.cfg.run.seed * 100003 + self.step) * 64 + rnd + 1
        return self.parts.runner.run([self.parts.by_id[e.prompt_id] for e in picked], ns,
                                     self.cfg.rollout.sampling(seed=seed))

    def _generate(self, step_entries) -> tuple[list, tuple[int, float], dict]:
        """Rank 0: this step's groups, their generation cost (tokens, FLOPs) and extra statistics — the plan's
        groups for the step, or with partial rollouts the first to complete of those in flight."""
        cfg, parts = self.cfg, self.parts
        params = cfg.rollout.sampling(seed=cfg.run.seed * 100003 + self.step)
        if self.april:
            groups, info = self.april.run(parts.by_id, self._group_sizes, params, version=self.step)
            stats = {"rollout/requests": len(info["requests"]), "rollout/stale_tokens": info["stale_tokens"],
                     "rollout/carried_groups": info["carried"]}
            return groups, parts.runner.request_cost(info["requests"]), stats
        items = [parts.by_id[pid] for pid, _ in step_entries]
        groups = parts.runner.run(items, self._group_sizes(step_entries), params)
        return groups, parts.runner.cost(groups), {}

    def _rollout(self, step_entries) -> tuple[StepSamples | None, dict]:
        """Rank 0: this step's groups, and the samples the optimiser will see."""
        cfg, parts = self.cfg, self.parts
        groups, (tokens, flops), extra_stats = self._generate(step_entries)
        generated = groups
        if cfg.selection.refill:
            self._refilled = set()
            result = refill(groups, lambda rnd, count: self._refill_draw(step_entries, rnd, count), len(groups),
                            cfg.selection.refill_rounds)
            groups, generated = result.trained, result.generated
            extra_stats = {"refill/rounds": result.rounds, "refill/generated_groups": len(generated),
                           "refill/short": result.short}
            tokens, flops = parts.runner.cost(generated)
        self.ledger.add("rollout", tokens, flops)
        if self.tracker:
            for group in generated:
                self.tracker.update(group.item.id, group.rewards)
                self.seen.add(group.item.id)
        samples = None
        if groups:
            samples = build_step_samples(groups, cfg.grsp, cfg.selection,
                                         np.random.default_rng([cfg.run.seed, self.step]))
        stats = {**rollout_stats(generated, [len(g.rewards) for g in generated]), **extra_stats,
                 "rollout/tokens": tokens}
        stats["trained_samples"] = 0 if samples is None else len(samples.sequences)
        return samples, stats

    def _reprofile(self, upcoming) -> None:
        """Online mode: sample k answers for the prompts of the next K steps and fold them into their
        posteriors, so their group sizes follow the current policy (rank 0; booked as profiling)."""
        items = [self.parts.by_id[pid] for entries in upcoming for pid, _ in entries]
        groups = self.parts.runner.run(items, [self.cfg.profile.k] * len(items),
                                       self.cfg.rollout.sampling(seed=self.cfg.run.seed * 65537 + self.step))
        self.ledger.add("profiling", *self.parts.runner.cost(groups))
        for group in groups:
            self.tracker.update(group.item.id, group.rewards)
            self.seen.add(group.item.id)

    def _account_training(self, samples: StepSamples) -> None:
        """Old log-probs (and reference log-probs) once per sample, training once per sample and PPO epoch."""
        shape, passes, epochs = self.parts.shape, 1 + (self.parts.reference is not None), self.cfg.train.ppo_epochs
        lens = [len(s) for s in samples.sequences]
        self.ledger.add("logprob", passes * sum(lens), passes * sum(logprob_flops(shape, n) for n in lens))
        self.ledger.add("training", epochs * sum(lens), epochs * sum(training_flops(shape, n) for n in lens))

    def _update(self, samples: StepSamples, stats: dict) -> None:
        """One optimizer step on every rank; a NaN/inf loss skips the step (three in a row stop the run)."""
        cfg, parts = self.cfg, self.parts
        try:
            metrics = update(parts.policy, samples, cfg.loss, parts.layout, parts.dp_rank,
                             cfg.train.max_tokens_per_micro_batch, parts.cost, cfg.rollout.temperature,
                             cfg.train.mini_batches, cfg.train.ppo_epochs,
                             np.random.default_rng([cfg.run.seed, self.step, 1]), parts.reference, cfg.mismatch,
                             policy_version=self.step)
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

    def _sync(self, version: int) -> None:
        self.weights.push(version)

    def train_one(self, steps: list) -> dict:
        cfg, parts = self.cfg, self.parts
        self.ledger.start_step(self.step)
        t0 = time.time()

        def rollout():
            if self.tracker and self.tracker.due_for_reprofile(self.step):
                self._reprofile(steps[self.step : self.step + cfg.online.reprofile_every])
            return self._rollout(steps[self.step])

        samples, stats = run_on_rank0(f"rollout of step {self.step + 1}", rollout)
        release = cfg.rollout.release_memory and parts.engine is not None
        if release:  # colocated: the engine's weights and KV cache make room for training
            parts.engine.release_memory()
        t1 = time.time()
        if samples is not None:
            self._update(samples, stats)
        t2 = time.time()
        if release:
            parts.engine.resume_memory()
        self._sync(version=self.step + 1)
        stats.update({"time/rollout": t1 - t0, "time/train": t2 - t1, "time/sync": time.time() - t2})
        self.step += 1
        return stats

    # ------------------------------------------------------------------ state
    def _state(self) -> dict:
        sgpo = self.cfg.run.mode == "sgpo"
        profile = (self.cfg.profile.path or os.path.join(self.out, "profile.json")) if sgpo else None
        return {"step": self.step, "plan": self.plan.to_dict(), "ledger": self.ledger.to_dict(), "profile": profile,
                "posteriors": self.tracker.to_dict() if self.tracker else None, "seen": sorted(self.seen),
                "bad_steps": self.bad_steps, "evals": self.evals,
                "partial": self.april.state_dict() if self.april else None}

    def _resume(self) -> bool:
        path = checkpoint.latest(self.out)
        if path is None:
            return False
        state = checkpoint.load(path, self.parts.policy)
        self.step, self.bad_steps, self.evals = state["step"], state["bad_steps"], state["evals"]
        self._april_state = state.get("partial")
        self.plan = Plan.from_dict(state["plan"])
        self.ledger = ComputeLedger.from_dict(state["ledger"])
        if state["posteriors"]:
            self.tracker = PosteriorTracker.from_dict(state["posteriors"])
            self.seen = set(state["seen"])
        self._sync(version=self.step)
        if self.rank == 0:
            tqdm.write(f"resumed from {path} at step {self.step}")
        return True

    def _evaluate(self, tag: str) -> None:
        if self.parts.eval_items:
            result = run_on_rank0(f"evaluation ({tag})", lambda: evaluate(self.parts, self.cfg))
            self.evals.append({"step": self.step, "tag": tag, "total_flops": self.ledger.total_flops, **result})
            self.log.evaluation(self.step, result)

    # ------------------------------------------------------------------ main
    def run(self) -> dict:
        cfg = self.cfg
        if not self._resume():
            if cfg.model.megatron_path:  # the engine started from hf_path's weights: give it the policy's
                self._sync(version=0)
            self._make_plan()
            self._evaluate("before")
        steps = self._steps()
        if cfg.rollout.partial and self.rank == 0:
            # the whole schedule, not only train.steps of it: groups are taken ahead, the same way in a longer run
            schedule = list(self.plan.schedule(cfg.train.prompts_per_step, cfg.train.epochs))
            self.april = PlanRollouts(self.parts.runner, self.parts.engine, schedule, cfg.train.prompts_per_step,
                                      cfg.rollout.partial_inflight)
            if self._april_state:
                self.april.load_state_dict(self._april_state)
        bar = tqdm(total=len(steps), initial=self.step, desc=cfg.run.mode, disable=self.rank != 0)
        while self.step < len(steps):
            stats = self.train_one(steps)
            self.log.step(self.step, stats, self.ledger)
            bar.update(1)
            bar.set_postfix(reward=f"{stats['reward_mean']:.2f}", n=stats["samples"])
            if cfg.train.eval_every and self.step % cfg.train.eval_every == 0 and self.step < len(steps):
                self._evaluate("periodic")
            if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                checkpoint.save(self.out, self.step, self.parts.policy, self._state(), self.parts.hf_path,
                                cfg.train.keep_checkpoints)
        bar.close()
        self._evaluate("after")
        if cfg.train.export_hf:
            self._export()
        return self._finish(len(steps))

    def _export(self) -> None:
        """The trained policy as an HF folder, ``<output_dir>/hf`` (replaced if there)."""
        from megatron_sgpo.model.export import write_hf

        policy = self.parts.policy
        summary = write_hf(policy.modules(), policy.hf_config, policy.layout,
                           checkpoint.policy_metadata(policy, self.parts.hf_path), self.parts.hf_path,
                           os.path.join(self.out, "hf"), overwrite=True, progress=self.rank == 0)
        if self.rank == 0:
            tqdm.write(summary.line())

    def _finish(self, num_steps: int) -> dict:
        summary = {"mode": self.cfg.run.mode, "steps": num_steps, "plan_counts": vars(self.plan.counts),
                   "compute": self.ledger.phase_totals(), "total_flops": self.ledger.total_flops,
                   "evals": self.evals}
        if self.rank == 0:
            checkpoint.write_json_atomic(os.path.join(self.out, "summary.json"), summary)
            print(report(summary, self.out))
        self.log.close()
        self.weights.close()
        if self.april:
            self.april.close()
        return summary
