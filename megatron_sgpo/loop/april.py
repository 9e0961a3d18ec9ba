"""Partial rollouts (APRIL, ``rollout.partial``) in the training loop: the plan's prompts, taken ahead.

Each step starts the groups carried over from the step before plus the next prompts of the plan's schedule, until
``rollout.partial_inflight × train.prompts_per_step`` groups are in flight; the first ``prompts_per_step`` groups to
complete are trained and the rest are aborted, kept and resumed at the next step under the new weights. Groups are
keyed by their position in the flattened schedule, as a prompt comes back in every epoch. Booked as rollout compute:
every request sent — its context, prefilled again on a resume, and the tokens it made, aborted ones included. Groups
still unfinished when the run ends were booked and are not trained. Runs on global rank 0, where the engine client
lives; the carried groups go into the checkpoint (``state_dict``).
"""
from __future__ import annotations

import math
from typing import Callable

from megatron_sgpo.rollout.engine import EngineError, SamplingParams
from megatron_sgpo.rollout.groups import Group, GroupRunner
from megatron_sgpo.rollout.partial import PartialRollouts


class PlanRollouts:
    """The plan's schedule (a list of steps, each a list of (prompt id, n)) through :class:`PartialRollouts`."""

    def __init__(self, runner: GroupRunner, engine, schedule: list[list[tuple]], per_step: int, inflight: float):
        self.runner = runner
        self.queue = [entry for step in schedule for entry in step]
        self.taken = 0  # schedule entries started so far
        self.per_step = per_step
        self.in_flight = math.ceil(inflight * per_step)
        self.rollouts = PartialRollouts(engine)

    def run(self, by_id: dict, sizes: Callable[[list], list[int]], params: SamplingParams,
            version: int) -> tuple[list[Group], dict]:
        """This step's trained groups, the engines serving weight ``version``, and its rollout bookkeeping:
        ``requests`` as (context, tokens made) of every request sent, ``stale_tokens`` of the trained groups (made by
        an older version), ``carried`` groups left for the next step."""
        room = max(0, self.in_flight - len(self.rollouts.carried))
        fresh = self.queue[self.taken: self.taken + room]
        keys = range(self.taken, self.taken + len(fresh))
        self.taken += len(fresh)
        groups, done = [], {}
        ns = sizes(fresh) if fresh else []
        starts = [(key, self.runner.encode(by_id[pid].prompt), n) for key, (pid, _), n in zip(keys, fresh, ns)]
        available = len(self.rollouts.carried) + len(starts)
        if available:
            done = self.rollouts.run(starts, min(self.per_step, available), params)
        stale = 0
        for key, completions in done.items():
            versions = [v for c in completions for v in c.extra["token_versions"]]
            if -1 in versions:
                raise EngineError("rollout.partial needs the weight version of every token, and the engine reported "
                                  "none (start SGLang with --weight-version)")
            if max(versions) > version:
                raise EngineError(f"a token of weight version {max(versions)} came back while the engines should "
                                  f"serve version {version}")
            stale += sum(v < version for v in versions)
            prompt_ids = completions[0].extra["prompt_ids"]  # encoded when the group started, maybe a step ago
            groups.append(self.runner.score(by_id[self.queue[key][0]], prompt_ids, completions))
        return groups, {"requests": self.rollouts.take_segments(), "stale_tokens": stale,
                        "carried": len(self.rollouts.carried)}

    def state_dict(self) -> dict:
        return {"taken": self.taken, **self.rollouts.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.taken = int(state["taken"])
        self.rollouts.load_state_dict(state)

    def close(self) -> None:
        self.rollouts.close()
