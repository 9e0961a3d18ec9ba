"""Partial rollouts (APRIL): over-provision groups, stop once enough are complete, recycle the unfinished ones.

A step of group sampling waits for its longest response; with a long-tailed length distribution most of the
batch idles behind a few samples. Here every sample is its own request (n = 1) to an engine that batches
concurrent requests (SGLang's continuous batching); more groups than the step needs are started, and as soon
as ``target`` groups have all their samples the rest are aborted (by request id). What they produced is kept:
finished samples stay with their group, unfinished ones are resumed at the next call — prompt plus the tokens
so far, under the weights the engine holds then — so no generated token is thrown away. Each kept token is
tagged with the weight version that produced it (``Completion.extra["token_versions"]``), so the loss can
importance-correct or mask the older tokens. For the ledger, ``take_segments`` gives every request sent — its
context (the prompt plus the tokens resumed from, which the engine prefills again) and the tokens it made, aborted
ones included — so every generated token is booked once.
"""
from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from typing import Hashable

from .engine import Completion, SamplingParams, sample_seed


@dataclass
class _Sample:
    """One sample of a group, possibly generated in several segments under different weight versions."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    finish: str | None = None  # None while unfinished

    def add(self, c: Completion) -> int:
        self.token_ids += c.token_ids
        self.logprobs += c.logprobs
        self.versions += [-1 if c.weight_version is None else c.weight_version] * len(c.token_ids)
        if c.finish_reason != "abort":
            self.finish = c.finish_reason
        return len(c.token_ids)


@dataclass
class _Group:
    key: Hashable
    prompt: list[int]
    samples: list[_Sample]

    @property
    def done(self) -> bool:
        return all(s.finish is not None for s in self.samples)


class PartialRollouts:
    """Groups over calls to :meth:`run`; ``client`` is an :class:`SGLangClient` (generate_group, abort_inflight)."""

    def __init__(self, client, max_inflight: int = 64):
        self.client = client
        self._pool = ThreadPoolExecutor(max_inflight, thread_name_prefix="april")
        self.carried: dict[Hashable, _Group] = {}  # unfinished groups, resumed first by the next run
        self.generated_tokens = 0  # every token generated, aborted segments included
        self._segments: list[tuple[int, int]] = []  # (context tokens, tokens made) of every request since the last take
        self._count_lock = threading.Lock()

    def run(self, groups: list[tuple[Hashable, list[int], int]], target: int,
            params: SamplingParams) -> dict[Hashable, list[Completion]]:
        """Start the carried groups and then ``groups`` (key, prompt ids, n); return the first ``target`` groups
        to complete (key → n completions; ``extra["token_versions"]`` tags every token, ``extra["prompt_ids"]`` is
        the group's prompt); the others are aborted and carried to the next call."""
        if target < 1:
            raise ValueError(f"target must be >= 1, got {target}")
        todo = dict(self.carried)
        for key, prompt, n in groups:
            if key in todo:
                raise ValueError(f"group {key!r} is already in flight (carried from an earlier step)")
            todo[key] = _Group(key, list(prompt), [_Sample() for _ in range(int(n))])
        if len(todo) < target:
            raise ValueError(f"{len(todo)} groups to run, fewer than the target {target}")
        futures, stopping = {}, threading.Event()
        finished = [k for k, g in todo.items() if g.done]  # completed last time, beyond that call's target
        for gi, g in enumerate(todo.values()):
            for j, s in enumerate(g.samples):
                if s.finish is None:
                    futures[self._pool.submit(self._resume, g, s, self._params(params, gi, j, s), stopping)] = g
        pending = set(futures)
        while pending and len(finished) < target:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                f.result()  # an engine error ends the call
                g = futures[f]
                if g.done and g.key not in finished:
                    finished.append(g.key)
        stopping.set()  # enough groups: stop the rest, keep what they made
        while pending:  # again until all returned: a request sent just as we aborted is caught by the next round
            self.client.abort_inflight()
            _, pending = wait(pending, timeout=0.2)
        for f in futures:
            f.result()
        keep = finished[:target]
        self.carried = {k: g for k, g in todo.items() if k not in keep}
        return {k: [self._completion(todo[k], s) for s in todo[k].samples] for k in keep}

    @staticmethod
    def _params(params: SamplingParams, group_index: int, j: int, s: _Sample) -> SamplingParams:
        """The rest of one sample: max_new_tokens less what it has; a seed of its own (position and length)."""
        left = params.max_new_tokens - len(s.token_ids)
        seed = None if params.seed is None else sample_seed(params.seed + len(s.token_ids), group_index, j)
        return replace(params, max_new_tokens=max(left, 1), seed=seed)

    def _resume(self, group: _Group, sample: _Sample, params: SamplingParams, stopping: threading.Event) -> None:
        """Generate the rest of one sample: its prompt is the group's prompt plus the tokens it already has."""
        if stopping.is_set():
            return
        context = len(group.prompt) + len(sample.token_ids)
        out = self.client.generate_group(group.prompt + sample.token_ids, 1, params, 0)
        made = sample.add(out[0])  # one thread per sample: no other writer of it
        with self._count_lock:
            self.generated_tokens += made
            self._segments.append((context, made))

    def take_segments(self) -> list[tuple[int, int]]:
        """(context tokens, tokens made) of every request sent since the last call, in completion order."""
        with self._count_lock:
            out, self._segments = self._segments, []
        return out

    def state_dict(self) -> dict:
        """The carried groups (JSON-able), for a checkpoint."""
        return {"carried": [{"key": g.key, "prompt": g.prompt, "samples": [asdict(s) for s in g.samples]}
                            for g in self.carried.values()]}

    def load_state_dict(self, state: dict) -> None:
        self.carried = {g["key"]: _Group(g["key"], list(g["prompt"]), [_Sample(**s) for s in g["samples"]])
                        for g in state["carried"]}

    @staticmethod
    def _completion(group: _Group, s: _Sample) -> Completion:
        versions = [v for v in s.versions if v >= 0]
        return Completion(0, list(s.token_ids), list(s.logprobs), s.finish,
                          weight_version=versions[-1] if versions else None,
                          extra={"token_versions": list(s.versions), "group": group.key, "prompt_ids": group.prompt})

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
