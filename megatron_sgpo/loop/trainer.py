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

from megatron_sgpo.algo.ledger import ComputeLedger
from megatron_sgpo.algo.plan import Plan, fixed_plan, make_plan
from megatron_sgpo.algo.posterior import PosteriorTracker
from megatron_sgpo.algo.samples import StepSamples
from megatron_sgpo.config import RunConfig, save_config
from megatron_sgpo.loop import checkpoint
from megatron_sgpo.loop.april import PlanRollouts
from megatron_sgpo.loop.build import RunParts, build_parts
from megatron_sgpo.loop.evaluate import evaluate
from megatron_sgpo.loop.metrics import RunLog, report
from megatron_sgpo.loop.producer import RolloutProducer, drop_stale
from megatron_sgpo.loop.profiling import run_profiling
from megatron_sgpo.loop.rollouts import StepRollout, StepRollouts
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
        self.april: PlanRollouts | None = None  # rank 0, with rollout.partial
        self._april_state: dict | None = None  # its carried groups, from the checkpoint resumed from
        self.rollouts: StepRollouts | None = None  # rank 0
        self.producer: RolloutProducer | None = None  # rank 0, with rollout.asynchronous
        self._ready: list[StepRollout] = []  # steps made ahead, from the checkpoint resumed from
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
        """Push the policy's weights as ``version`` (collective); the producer, if any, waits meanwhile."""
        if self.producer is None:
            self.weights.push(version)
            return
        with self.producer.engine_lock:
            self.weights.push(version)
        self.producer.synced(version)

    def _take_rollout(self) -> StepRollout:
        """Rank 0: this step's rollouts, made now or (asynchronously) ahead."""
        if self.producer is not None:
            return self.producer.take(self.step)
        return self.rollouts.produce(self.step)

    def train_one(self) -> dict:
        cfg, parts = self.cfg, self.parts
        self.ledger.start_step(self.step)
        t0 = time.time()
        made = run_on_rank0(f"rollout of step {self.step + 1}", self._take_rollout)
        for phase, tokens, flops in made.costs:  # booked in the step that trains them, on every rank
            self.ledger.add(phase, tokens, flops)
        samples, stats = made.samples, made.stats
        if cfg.rollout.asynchronous:
            samples, stats["async/dropped_groups"] = drop_stale(samples, self.step, cfg.rollout.max_staleness)
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
        """The RL state; with the producer running, taken between two of its generations (posteriors and the
        steps made ahead agree)."""
        if self.producer is None:
            return self._state_now()
        with self.producer.engine_lock:
            return self._state_now()

    def _state_now(self) -> dict:
        sgpo = self.cfg.run.mode == "sgpo"
        profile = (self.cfg.profile.path or os.path.join(self.out, "profile.json")) if sgpo else None
        return {"step": self.step, "plan": self.plan.to_dict(), "ledger": self.ledger.to_dict(), "profile": profile,
                "posteriors": self.tracker.to_dict() if self.tracker else None, "seen": sorted(self.seen),
                "bad_steps": self.bad_steps, "evals": self.evals,
                "partial": self.april.state_dict() if self.april else None,
                "ready": self.producer.state() if self.producer else []}

    def _resume(self) -> bool:
        path = checkpoint.latest(self.out)
        if path is None:
            return False
        state = checkpoint.load(path, self.parts.policy)
        self.step, self.bad_steps, self.evals = state["step"], state["bad_steps"], state["evals"]
        self._april_state = state.get("partial")
        self._ready = [StepRollout.from_dict(r) for r in state.get("ready", [])]
        self.plan = Plan.from_dict(state["plan"])
        self.ledger = ComputeLedger.from_dict(state["ledger"])
        if state["posteriors"]:
            self.tracker = PosteriorTracker.from_dict(state["posteriors"])
            self.seen = set(state["seen"])
        self._sync(version=self.step)
        if self.rank == 0:
            tqdm.write(f"resumed from {path} at step {self.step}")
        return True

    def _start_rollouts(self, steps: list) -> None:
        """Rank 0: the rollout side — partial rollouts over the whole schedule (not only train.steps of it: groups
        are taken ahead the same way in a longer run), and the producer thread when asynchronous."""
        cfg = self.cfg
        if cfg.rollout.partial:
            schedule = list(self.plan.schedule(cfg.train.prompts_per_step, cfg.train.epochs))
            self.april = PlanRollouts(self.parts.runner, self.parts.engine, schedule, cfg.train.prompts_per_step,
                                      cfg.rollout.partial_inflight)
            if self._april_state:
                self.april.load_state_dict(self._april_state)
        self.rollouts = StepRollouts(cfg, self.parts, self.plan, steps, self.tracker, self.seen, self.april)
        if cfg.rollout.asynchronous:
            self.producer = RolloutProducer(self.rollouts.produce, len(steps), self.step, cfg.rollout.max_staleness,
                                            self._ready)

    def _evaluate(self, tag: str) -> None:
        if self.parts.eval_items:
            result = run_on_rank0(f"evaluation ({tag})", self._evaluate_now)
            self.evals.append({"step": self.step, "tag": tag, "total_flops": self.ledger.total_flops, **result})
            self.log.evaluation(self.step, result)

    # ------------------------------------------------------------------ main
    def run(self) -> dict:
        cfg = self.cfg
        if not self._resume():
            # the engines may have started from other weights (model.megatron_path) or served another run
            self._sync(version=0)
            self._make_plan()
            self._evaluate("before")
        steps = self._steps()
        if self.rank == 0:
            self._start_rollouts(steps)
        bar = tqdm(total=len(steps), initial=self.step, desc=cfg.run.mode, disable=self.rank != 0)
        while self.step < len(steps):
            stats = self.train_one()
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

    def _evaluate_now(self) -> dict:
        if self.producer is None:
            return evaluate(self.parts, self.cfg)
        with self.producer.engine_lock:
            return evaluate(self.parts, self.cfg)

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
        if self.producer:
            self.producer.close()
        self.log.close()
        self.weights.close()
        if self.april:
            self.april.close()
        return summary
