"""A step's rollouts, on global rank 0: the plan's prompts at their group sizes → groups → the samples the optimiser
sees, with what they cost.

Everything that generates during training lives here (group sizes from the plan or the online posteriors, refill
rounds, partial rollouts, re-profiling), so the synchronous loop and the asynchronous producer (loop/producer.py)
run the same code. Posteriors absorb a step's rewards when its rollouts are made, in step order; the compute is
returned with the samples (``StepRollout.costs``) and booked by the trainer when it trains the step, so every
generated token is booked once, in the step that uses it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_sgpo.algo.allocate import budgeted_sizes
from megatron_sgpo.algo.refill import refill
from megatron_sgpo.algo.samples import StepSamples, build_step_samples
from megatron_sgpo.loop.april import PlanRollouts
from megatron_sgpo.loop.metrics import rollout_stats


@dataclass
class StepRollout:
    step: int
    samples: StepSamples | None  # None when the selection kept nothing
    stats: dict
    costs: list  # (ledger phase, tokens, FLOPs) of everything generated for the step

    def to_dict(self) -> dict:
        return {"step": self.step, "samples": None if self.samples is None else self.samples.to_dict(),
                "stats": self.stats, "costs": [list(c) for c in self.costs]}

    @classmethod
    def from_dict(cls, d: dict) -> "StepRollout":
        samples = None if d["samples"] is None else StepSamples.from_dict(d["samples"])
        return cls(int(d["step"]), samples, d["stats"], [tuple(c) for c in d["costs"]])


class StepRollouts:
    """Rank 0's rollout side of the loop; ``tracker`` and ``seen`` are the trainer's (checkpointed by it)."""

    def __init__(self, cfg, parts, plan, steps: list, tracker=None, seen: set | None = None,
                 april: PlanRollouts | None = None):
        self.cfg, self.parts, self.plan, self.steps = cfg, parts, plan, steps
        self.tracker, self.seen, self.april = tracker, seen if seen is not None else set(), april

    def group_sizes(self, step_entries, budgeted: bool = True) -> list[int]:
        """The plan's sizes, or with online posteriors the sizes the current posteriors give (split over the step
        budget with ``plan.allocation=budgeted``, unless ``budgeted`` is False, as for refill prompts)."""
        if not self.tracker:
            return [n for _, n in step_entries]
        plan = self.cfg.plan
        if budgeted and plan.allocation == "budgeted":
            return budgeted_sizes([self.tracker.posterior(pid) for pid, _ in step_entries], plan.step_rollout_budget,
                                  plan.n_min, plan.n_max)
        return [self.tracker.group_size(pid) if pid in self.seen else n for pid, n in step_entries]

    def produce(self, step: int) -> StepRollout:
        """Step ``step``'s samples: re-profiling first when it is due, then the step's groups."""
        costs = []
        if self.tracker and self.tracker.due_for_reprofile(step):
            costs.append(("profiling", *self._reprofile(step)))
        samples, stats, cost = self._rollout(step)
        return StepRollout(step, samples, stats, costs + [("rollout", *cost)])

    def _refill_draw(self, step: int, used: set, rnd: int, count: int) -> list:
        """``count`` more prompts of the plan for refill round ``rnd`` (seeded by run, step, round), none in
        ``used`` (generated this step already), at their plan sizes."""
        pool = [e for e in self.plan.entries if e.prompt_id not in used]
        rng = np.random.default_rng([self.cfg.run.seed, step, 7, rnd])
        picked = [pool[i] for i in rng.permutation(len(pool))[:count]]
        used |= {e.prompt_id for e in picked}
        if not picked:
            return []
        ns = self.group_sizes([(e.prompt_id, e.n) for e in picked], budgeted=False)
        seed = (self.cfg.run.seed * 100003 + step) * 64 + rnd + 1
        return self.parts.runner.run([self.parts.by_id[e.prompt_id] for e in picked], ns,
                                     self.cfg.rollout.sampling(seed=seed))

    def _generate(self, step: int) -> tuple[list, tuple[int, float], dict]:
        """The step's groups, their generation cost (tokens, FLOPs) and extra statistics — the plan's groups for
        the step, or with partial rollouts the first to complete of those in flight."""
        cfg, parts = self.cfg, self.parts
        params = cfg.rollout.sampling(seed=cfg.run.seed * 100003 + step)
        if self.april:  # synchronous loop only: the engines serve the weights of version `step`
            groups, info = self.april.run(parts.by_id, self.group_sizes, params, version=step)
            stats = {"rollout/requests": len(info["requests"]), "rollout/stale_tokens": info["stale_tokens"],
                     "rollout/carried_groups": info["carried"]}
            return groups, parts.runner.request_cost(info["requests"]), stats
        entries = self.steps[step]
        groups = parts.runner.run([parts.by_id[pid] for pid, _ in entries], self.group_sizes(entries), params)
        return groups, parts.runner.cost(groups), {}

    def _rollout(self, step: int) -> tuple[StepSamples | None, dict, tuple[int, float]]:
        cfg, parts = self.cfg, self.parts
        groups, (tokens, flops), extra_stats = self._generate(step)
        generated = groups
        if cfg.selection.refill:
            used = {pid for pid, _ in self.steps[step]}
            result = refill(groups, lambda rnd, count: self._refill_draw(step, used, rnd, count), len(groups),
                            cfg.selection.refill_rounds)
            groups, generated = result.trained, result.generated
            extra_stats = {"refill/rounds": result.rounds, "refill/generated_groups": len(generated),
                           "refill/short": result.short}
            tokens, flops = parts.runner.cost(generated)
        if self.tracker:
            for group in generated:
                self.tracker.update(group.item.id, group.rewards)
                self.seen.add(group.item.id)
        samples = None
        if groups:
            samples = build_step_samples(groups, cfg.grsp, cfg.selection, np.random.default_rng([cfg.run.seed, step]))
        stats = {**rollout_stats(generated, [len(g.rewards) for g in generated]), **extra_stats,
                 "rollout/tokens": tokens}
        stats["trained_samples"] = 0 if samples is None else len(samples.sequences)
        return samples, stats, (tokens, flops)

    def _reprofile(self, step: int) -> tuple[int, float]:
        """Online mode: sample k answers for the prompts of the next K steps and fold them into their
        posteriors, so their group sizes follow the current policy; returns its (tokens, FLOPs), booked as
        profiling."""
        upcoming = self.steps[step: step + self.cfg.online.reprofile_every]
        items = [self.parts.by_id[pid] for entries in upcoming for pid, _ in entries]
        groups = self.parts.runner.run(items, [self.cfg.profile.k] * len(items),
                                       self.cfg.rollout.sampling(seed=self.cfg.run.seed * 65537 + step))
        for group in groups:
            self.tracker.update(group.item.id, group.rewards)
            self.seen.add(group.item.id)
        return self.parts.runner.cost(groups)
