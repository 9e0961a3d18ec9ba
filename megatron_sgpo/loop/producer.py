"""Asynchronous rollouts (``rollout.asynchronous``): step k+1's rollouts are generated while step k trains.

A thread on global rank 0 makes each step's :class:`StepRollout` in step order, starting step j as soon as the
engines serve weights at most ``max_staleness`` versions older than the policy that will train it (version j), so
no token is ever more than ``max_staleness`` versions old; at most ``max_staleness + 1`` finished steps wait. The
engines are used by one caller at a time (``engine_lock``): the producer holds it while it generates, the weight
sync and the evaluation take it between two generations. With ``max_staleness = 0`` step j starts only after
version j is synced: the synchronous loop, step for step. Finished steps not yet trained are part of the
checkpoint (``state``), taken under the lock together with the posteriors they updated.
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from megatron_sgpo.algo.samples import StepSamples
from megatron_sgpo.loop.rollouts import StepRollout


def drop_stale(samples: StepSamples | None, version: int, max_staleness: int) -> tuple[StepSamples | None, int]:
    """The samples without the groups holding a token more than ``max_staleness`` versions older than ``version``
    (the policy about to train), and how many groups were dropped. The producer's schedule makes none; this is the
    guard for engines that served older weights than they said. Their compute stays booked."""
    if samples is None or samples.token_versions is None:
        return samples, 0
    old = {int(g) for g, versions in zip(samples.group_ids, samples.token_versions)
           if versions and version - min(versions) > max_staleness}
    if not old:
        return samples, 0
    keep = np.array([i for i, g in enumerate(samples.group_ids) if int(g) not in old], dtype=int)
    return (samples.subset(keep) if len(keep) else None), len(old)


class RolloutProducer:
    """Rank 0's producer thread over ``produce(step)``; ``take`` hands the trainer each step in order."""

    def __init__(self, produce: Callable[[int], StepRollout], num_steps: int, version: int, max_staleness: int,
                 ready: list[StepRollout] = ()):
        self._produce, self.num_steps, self.max_staleness = produce, num_steps, max_staleness
        self.engine_lock = threading.Lock()
        self._cond = threading.Condition()
        self._version = version  # the weights the engines serve = steps trained
        self._ready = {r.step: r for r in ready}
        self._next = max(self._ready, default=version - 1) + 1
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rollout-producer")
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self._next < self.num_steps \
                        and self._next - self._version > self.max_staleness:
                    self._cond.wait()
                if self._closed or self._next >= self.num_steps:
                    return
                step = self._next
            try:
                with self.engine_lock:
                    made = self._produce(step)
            except BaseException as exc:  # handed to the trainer at its next take()
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                return
            with self._cond:
                self._ready[step] = made
                self._next += 1
                self._cond.notify_all()

    def take(self, step: int) -> StepRollout:
        """Step ``step``'s rollouts, waiting for them; an error of the producer is raised here."""
        with self._cond:
            while step not in self._ready and self._error is None:
                self._cond.wait()
            if step not in self._ready:
                raise RuntimeError(f"the rollout producer failed: {type(self._error).__name__}: {self._error}") \
                    from self._error
            return self._ready.pop(step)

    def synced(self, version: int) -> None:
        """The engines now serve ``version``: later steps may start."""
        with self._cond:
            self._version = version
            self._cond.notify_all()

    def state(self) -> list[dict]:
        """Finished, untrained steps (call holding ``engine_lock``, so that no step is half made)."""
        with self._cond:
            return [self._ready[s].to_dict() for s in sorted(self._ready)]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
