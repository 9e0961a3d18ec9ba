"""Several SGLang-API engines (SGLang servers or `sgpo serve`) behind one RolloutEngine, dispatched client-side.

Generation is split by prompt: a prompt with its n samples is one unit, and each unit goes to the live engine with
the fewest samples outstanding, keeping its index in the call (so seeds and `prompt_index` are those a single
engine would give). An engine whose request fails and that then no longer answers /health leaves the rotation
for good (a warning names it) and its unfinished units run on the others; a failure of an engine that is still
healthy (a refused request) is the caller's to see, as with one client. The other calls go to every live engine
at once. No router process sits in between: the weight sync may reach each engine directly through `clients`.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import requests

from .engine import Completion, EngineError, NamedTensors, RolloutEngine, SamplingParams, check_generate_args
from .sglang import SGLangClient

log = logging.getLogger(__name__)
_FAILURES = (EngineError, requests.RequestException)


class EngineFleet(RolloutEngine):
    """N SGLangClients; `clients` holds all of them in the order given (`rollout.urls`), `live()` those in rotation."""

    def __init__(self, clients: Sequence[SGLangClient], max_concurrency: int = 32):
        urls = [c.url for c in clients]
        if not urls:
            raise ValueError("EngineFleet needs at least one engine")
        twice = sorted({u for u in urls if urls.count(u) > 1})
        if twice:
            raise ValueError(f"EngineFleet: engine URL(s) listed twice: {', '.join(twice)}")
        self.clients = list(clients)
        self.max_concurrency = max_concurrency  # in-flight units per engine
        self._dead: dict[str, str] = {}  # url -> the failure that took it out of rotation
        self._units = {u: 0 for u in urls}
        self._samples = {u: 0 for u in urls}
        self._cond = threading.Condition()
        self._pool = ThreadPoolExecutor(max_concurrency * len(urls), thread_name_prefix="engine-fleet")
        self._fan = ThreadPoolExecutor(len(urls), thread_name_prefix="engine-fleet-fan")
        self._closed = False

    @classmethod
    def from_config(cls, rollout, model_path: str) -> "EngineFleet":
        """The ``rollout.engine: sglang`` (and ``serve``) entry: servers already running at ``rollout.urls``, or
        the one at ``rollout.url``."""
        urls = tuple(rollout.urls) or (rollout.url,)
        return cls([SGLangClient(u, tp_size=rollout.tp_size, weight_sync=rollout.weight_sync) for u in urls])

    def live(self) -> list[SGLangClient]:
        with self._cond:
            return [c for c in self.clients if c.url not in self._dead]

    def _none_left(self) -> EngineError:
        with self._cond:
            why = "; ".join(f"{url}: {err}" for url, err in self._dead.items())
        return EngineError(f"no rollout engine left in the fleet, every one failed: {why}")

    def _retire_if_down(self, client: SGLangClient, err: BaseException) -> bool:
        """After a failure on `client`: True when it is out of rotation (now or already), False when it still
        answers /health (then the failure was the request's, not the engine's)."""
        with self._cond:
            if client.url in self._dead:
                return True
        if client.health():
            return False
        with self._cond:
            if client.url not in self._dead:
                self._dead[client.url] = f"{type(err).__name__}: {err}"
                log.warning("rollout engine %s leaves the rotation (%d of %d left): %s: %s", client.url,
                            len(self.clients) - len(self._dead), len(self.clients), type(err).__name__, err)
                self._cond.notify_all()
        return True

    # ------------------------------------------------------------------ generation
    def _acquire(self, n: int) -> SGLangClient:
        """The live engine with the fewest outstanding samples among those with a free slot (waits for one)."""
        with self._cond:
            while True:
                live = [c for c in self.clients if c.url not in self._dead]
                if not live:
                    raise self._none_left()
                free = [c for c in live if self._units[c.url] < self.max_concurrency]
                if free:
                    client = min(free, key=lambda c: self._samples[c.url])
                    self._units[client.url] += 1
                    self._samples[client.url] += n
                    return client
                self._cond.wait()

    def _release(self, client: SGLangClient, n: int) -> None:
        with self._cond:
            self._units[client.url] -= 1
            self._samples[client.url] -= n
            self._cond.notify_all()

    def generate_group(self, prompt: list[int], n: int, params: SamplingParams, index: int) -> list[Completion]:
        """One prompt's n samples on the least-loaded live engine (another one if that engine dies meanwhile)."""
        while True:  # ends: each pass either returns, raises, or takes one more engine out of rotation
            client = self._acquire(n)
            try:
                return client.generate_group(prompt, n, params, index)
            except _FAILURES as e:
                if not self._retire_if_down(client, e):
                    raise
            finally:
                self._release(client, n)

    def generate(self, prompts, n_per_prompt, params: SamplingParams) -> list[list[Completion]]:
        check_generate_args(prompts, n_per_prompt)
        if self._closed:
            raise EngineError("EngineFleet is closed")
        futures = [self._pool.submit(self.generate_group, list(p), int(n), params, i) if int(n) > 0 else None
                   for i, (p, n) in enumerate(zip(prompts, n_per_prompt))]
        try:
            return [f.result() if f is not None else [] for f in futures]
        except BaseException:
            for f in futures:
                if f is not None:
                    f.cancel()
            raise

    # ------------------------------------------------------------------ every live engine
    def _fan_out(self, what: str, call: Callable[[SGLangClient], Any]) -> dict[str, Any]:
        """`call` on every live engine at once; {url: result} of those that stayed in rotation. Failures of engines
        still healthy are raised after all calls have returned."""
        clients = self.live()
        if not clients:
            raise self._none_left()
        futures = [(c, self._fan.submit(call, c)) for c in clients]
        results, errors = {}, []
        for c, f in futures:
            try:
                results[c.url] = f.result()
            except _FAILURES as e:
                if not self._retire_if_down(c, e):
                    errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise EngineError(f"{what} failed on {len(errors)} engines: " + "; ".join(map(str, errors)))
        if not results:
            raise self._none_left()
        return results

    def begin_weight_update(self, version: int) -> None:
        self._fan_out("begin_weight_update", lambda c: c.begin_weight_update(version))

    def update_weights(self, named_tensors: NamedTensors, version: int) -> None:
        named = list(named_tensors)  # may be a generator: every engine gets the same tensors
        self._fan_out("update_weights", lambda c: c.update_weights(named, version))

    def end_weight_update(self, version: int) -> None:
        self._fan_out("end_weight_update", lambda c: c.end_weight_update(version))

    def _versions(self) -> dict[str, int]:
        return self._fan_out("weight_version", lambda c: c.weight_version)

    @property
    def weight_version(self) -> int:
        """The version every live engine holds; an EngineError listing them all when they differ."""
        versions = self._versions()
        if len(set(versions.values())) > 1:
            raise EngineError("rollout engines hold different weight versions: "
                              + ", ".join(f"{url}: {v}" for url, v in versions.items()))
        return next(iter(versions.values()))

    def check_versions(self, expected: int) -> None:
        """Raise naming every live engine whose weight version is not `expected` (after a sync)."""
        off = {url: v for url, v in self._versions().items() if v != expected}
        if off:
            raise EngineError(f"rollout engines not at weight version {expected}: "
                              + ", ".join(f"{url}: {v}" for url, v in off.items()))

    def release_memory(self) -> None:
        self._fan_out("release_memory", lambda c: c.release_memory())

    def resume_memory(self) -> None:
        self._fan_out("resume_memory", lambda c: c.resume_memory())

    def abort(self) -> None:
        self._fan_out("abort", lambda c: c.abort())

    def abort_inflight(self) -> int:
        """Abort this fleet's own in-flight requests on every engine, by rid; returns how many were sent."""
        return sum(c.abort_inflight() for c in self.clients)

    def health(self) -> bool:
        return any(c.health() for c in self.live())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        for c in self.clients:  # aborts their in-flight requests, so the pool's running units end
            c.close()
        self._pool.shutdown(wait=True)
        self._fan.shutdown(wait=True)
