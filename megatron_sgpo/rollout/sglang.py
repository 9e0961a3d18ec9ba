"""RolloutEngine over SGLang's HTTP API (a real SGLang server or `sgpo serve`).

Per-prompt n: each prompt goes out as its own /generate request holding n copies of the prompt, each
copy with a request id of ours (SGLang's own `n` would replace the ids, so an abort by id would miss
them) and, with a seed, its own derived `sampling_seed` (SGLang keys its seeded noise on (seed,
position) only, so n samples under one seed would be identical). A thread pool bounds how many
requests are in flight; the server batches them itself (continuous batching).
SGLang honours seeds only when started with --enable-deterministic-inference, and frees memory on
release only with --enable-memory-saver: the client reads both from /server_info and refuses a seeded
request that would be silently unseeded, and skips a release that would free nothing.
Weight updates run inside SGLang's weight-update session (/begin_weight_update ... /end_weight_update),
with the cache flushed once at its end rather than per bucket (a per-bucket flush fails while requests
are queued).
Failures come back as EngineError naming the server URL and endpoint, plus the launcher's
last log lines when the client owns one.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, Optional

import requests
from requests.adapters import HTTPAdapter

from megatron_sgpo.weights.transports import BroadcastTransport, HandleTransport

from .engine import (Completion, EngineError, NamedTensors, RolloutEngine, SamplingParams, check_generate_args,
                     sample_seed)
from .launcher import ServerLaunchError, SGLangLauncher  # noqa: F401  (re-exported)
from .protocol import parse_completion, to_sglang_sampling

_RETRY_STATUS = {502, 503, 504}
log = logging.getLogger(__name__)


class SGLangClient(RolloutEngine):
    """HTTP client with pooled connections, bounded concurrency, timeouts and retry with backoff."""

    def __init__(self, url: str, launcher: Optional[SGLangLauncher] = None, max_concurrency: int = 32,
                 timeout_s: float = 600.0, connect_timeout_s: float = 5.0, max_retries: int = 3,
                 backoff_s: float = 0.5, tp_size: int = 1, weight_sync: str = "tensor"):
        if weight_sync not in ("tensor", "distributed", "disk"):
            raise ValueError(f"weight_sync must be 'tensor', 'distributed' or 'disk', got {weight_sync!r}")
        self.url = url.rstrip("/")
        self.launcher = launcher
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.tp_size, self.weight_sync = tp_size, weight_sync
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max_concurrency + 4, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="sglang-client")
        self._inflight: set[str] = set()
        self._inflight_lock = threading.Lock()
        self._version: Optional[int] = None
        self._server_info: Optional[dict] = None
        self._session: Optional[int] = None  # the version of the open weight-update session
        self._warned_release = False
        self._group = None  # BroadcastTransport, after init_weights_update_group
        self._handles = None  # HandleTransport, made at the first tensor update
        self._closed = False
        self.attempts = 0  # HTTP attempts made, retries included (observable in tests and logs)

    # ------------------------------------------------------------------ transport
    def _context(self) -> str:
        return f"\n{self.launcher.describe()}" if self.launcher is not None else ""

    def _dead_server_error(self, where: str, err: Exception) -> Optional[EngineError]:
        if self.launcher is None:
            return None
        for _ in range(20):  # a reset connection can arrive a moment before the exit is visible
            if not self.launcher.alive():
                return EngineError(f"{where}: server {self.url} died during the request ({err.__class__.__name__})."
                                   f"{self._context()}")
            time.sleep(0.05)
        return None

    def request(self, method: str, path: str, body: Any = None, timeout_s: Optional[float] = None,
                retry: bool = True, on_timeout: Optional[Callable[[], None]] = None) -> Any:
        """One API call; retries connection errors, timeouts and 502/503/504 with exponential backoff.

        `on_timeout` runs after a read timeout, before the retry (the generate path uses it to
        abort the abandoned request on the server and give the retry a fresh rid).
        """
        where = f"{method} {self.url}{path}"
        tries = 1 + (self.max_retries if retry else 0)
        last: Optional[Exception] = None
        for attempt in range(tries):
            with self._inflight_lock:
                self.attempts += 1
            try:
                r = self.session.request(method, self.url + path, json=body,
                                         timeout=(self.connect_timeout_s, timeout_s or self.timeout_s))
            except (requests.ConnectionError, requests.Timeout) as e:
                dead = self._dead_server_error(where, e)
                if dead is not None:
                    raise dead from e
                last = e
                if isinstance(e, requests.ReadTimeout) and on_timeout is not None and attempt + 1 < tries:
                    on_timeout()
            else:
                if r.status_code < 400:
                    return self._decode(r, where)
                msg = self._error_message(r)
                if r.status_code not in _RETRY_STATUS:
                    raise EngineError(f"{where} -> HTTP {r.status_code}: {msg}")
                last = EngineError(f"HTTP {r.status_code}: {msg}")
            if attempt + 1 < tries:
                time.sleep(self.backoff_s * (2 ** attempt))
        raise EngineError(f"{where} failed after {tries} attempt(s): {type(last).__name__}: {last}{self._context()}")

    @staticmethod
    def _decode(r: requests.Response, where: str) -> Any:
        if not r.content or not r.headers.get("Content-Type", "").startswith("application/json"):
            return r.text
        try:
            return r.json()
        except ValueError as e:
            raise EngineError(f"{where}: response is not valid JSON: {r.text[:200]!r}") from e

    @staticmethod
    def _error_message(r: requests.Response) -> str:
        try:
            err = r.json()
        except ValueError:
            return r.text[:500]
        if isinstance(err, dict):
            inner = err.get("error")
            return str((inner.get("message") if isinstance(inner, dict) else inner) or err.get("message") or err)
        return str(err)[:500]

    # ------------------------------------------------------------------ generation
    def server_info(self) -> dict:
        """SGLang's /server_info (its server arguments), read once."""
        if self._server_info is None:
            info = self.request("GET", "/server_info")
            if not isinstance(info, dict):
                raise EngineError(f"GET {self.url}/server_info: expected a JSON object, got {type(info).__name__}")
            self._server_info = info
        return self._server_info

    def _generate_one(self, prompt: list[int], n: int, params: SamplingParams, index: int) -> list[Completion]:
        """n copies of one prompt in one request, each under its own rid (and its own seed when seeded)."""
        sampling = [to_sglang_sampling(params if params.seed is None else
                                       replace(params, seed=sample_seed(params.seed, index, j)), 1)
                    for j in range(n)]
        body = {"input_ids": [list(prompt)] * n, "sampling_params": sampling, "return_logprob": True,
                "rid": [f"sgpo-{uuid.uuid4().hex}" for _ in range(n)]}
        with self._inflight_lock:
            self._inflight.update(body["rid"])

        def abandon():  # the timed-out attempt may still run on the server: abort it, retry under new rids
            for rid in body["rid"]:
                self._abort_rid(rid)
            with self._inflight_lock:
                self._inflight.difference_update(body["rid"])
                body["rid"] = [f"sgpo-{uuid.uuid4().hex}" for _ in range(n)]
                self._inflight.update(body["rid"])

        try:
            out = self.request("POST", "/generate", body, on_timeout=abandon)
        finally:
            with self._inflight_lock:
                self._inflight.difference_update(body["rid"])
        where = f"POST {self.url}/generate (prompt {index})"
        items = [out] if isinstance(out, dict) else out
        if not isinstance(items, list) or len(items) != n:
            got = len(items) if isinstance(items, list) else type(out).__name__
            raise EngineError(f"{where}: expected {n} completion(s), got {got}")
        return [parse_completion(x, index, where) for x in items]

    def _check_ready(self, params: SamplingParams) -> None:
        if self._closed:
            raise EngineError(f"SGLangClient for {self.url} is closed")
        seeded = params.seed is not None and not params.greedy
        if seeded and not self.server_info().get("enable_deterministic_inference"):
            raise EngineError(f"{self.url} ignores sampling seeds (SGLang honours them only when started with "
                              f"--enable-deterministic-inference, which SGLang 0.5.23 cannot run on a CPU): restart "
                              f"the server with that flag, or sample without a seed (rollout.seeded=false)")

    def generate_group(self, prompt: list[int], n: int, params: SamplingParams, index: int) -> list[Completion]:
        """The n samples of one prompt, numbered as prompt `index` of a larger call (its seeds and prompt_index
        follow that number): the unit an EngineFleet hands to one engine. Runs in the caller's thread."""
        self._check_ready(params)
        return self._generate_one(list(prompt), int(n), params, index)

    def generate(self, prompts, n_per_prompt, params: SamplingParams) -> list[list[Completion]]:
        check_generate_args(prompts, n_per_prompt)
        self._check_ready(params)
        futures = [self._pool.submit(self._generate_one, p, int(n), params, i) if int(n) > 0 else None
                   for i, (p, n) in enumerate(zip(prompts, n_per_prompt))]
        results = []
        try:
            for f in futures:
                results.append(f.result() if f is not None else [])
        except BaseException:
            for f in futures:
                if f is not None:
                    f.cancel()
            raise
        return results

    # ------------------------------------------------------------------ weights
    def begin_weight_update(self, version: int) -> None:
        """Open SGLang's weight-update session; the tensor and distributed updates are refused outside one."""
        if self._session is not None:
            raise EngineError(f"a weight-update session (version {self._session}) is already open on {self.url}")
        self.request("POST", "/begin_weight_update", {}, retry=False)
        self._session = int(version)

    def end_weight_update(self, version: int) -> None:
        """Close the session, then drop the prefix cache the old weights computed (waiting for running requests)."""
        if self._session is None:
            return
        self._session = None
        self.request("POST", "/end_weight_update", {}, retry=False)
        self.request("POST", f"/flush_cache?timeout={self.timeout_s:g}", None, retry=False)

    def update_weights(self, named_tensors: NamedTensors, version: int) -> None:
        """One bucket through the configured transport (tensor handles or NCCL/gloo broadcast); outside a sync's
        session (a direct call) the bucket gets a session of its own."""
        own = self._session is None
        if own:
            self.begin_weight_update(version)
        try:
            if self.weight_sync == "tensor":
                self.update_weights_from_tensor(named_tensors, version)
            elif self.weight_sync == "distributed":
                self.update_weights_from_distributed(named_tensors, version)
            else:
                raise EngineError("weight_sync='disk' reloads a whole folder, not a bucket: the weight sync writes "
                                  "it and calls update_weights_from_disk")
        finally:
            if own:
                self.end_weight_update(version)

    def update_weights_from_tensor(self, named_tensors: NamedTensors, version: int) -> None:
        """Inside a session (see begin_weight_update); the cache is flushed once, at its end."""
        if self._handles is None:
            self._handles = HandleTransport([self])
        self._handles.send(list(named_tensors), version)
        self._version = int(version)

    def init_weights_update_group(self, master_address: str, master_port: int, backend: str = "nccl",
                                  group_name: str = "weight_update_group", timeout_s: float = 120.0) -> None:
        """Create the group of this process (rank 0) and every rank of this server; the server joins while this
        call waits. A sync of several engines uses :class:`BroadcastTransport` over all of them instead."""
        if self._group is not None:
            self._group.close()
        self._group = BroadcastTransport([self], backend, master_address, group_name, timeout_s, port=master_port)

    def update_weights_from_distributed(self, named_tensors: NamedTensors, version: int) -> None:
        """Inside a session, after init_weights_update_group; one broadcast per tensor, in name order."""
        if self._group is None:
            raise EngineError("update_weights_from_distributed: call init_weights_update_group first")
        self._group.send(list(named_tensors), version)
        self._version = int(version)

    def update_weights_from_disk(self, model_path: str, version: Optional[int] = None) -> None:
        body: dict[str, Any] = {"model_path": model_path}
        if version is not None:
            body["weight_version"] = str(int(version))
        self.request("POST", "/update_weights_from_disk", body, retry=False)
        self._version = None if version is None else int(version)

    @property
    def weight_version(self) -> int:
        info = self.request("GET", "/model_info")
        if not isinstance(info, dict) or "weight_version" not in info:
            raise EngineError(f"GET {self.url}/model_info: response has no 'weight_version'")
        try:
            return int(info["weight_version"])
        except (TypeError, ValueError):
            raise EngineError(f"GET {self.url}/model_info: weight_version {info['weight_version']!r} is not an "
                              f"integer (start SGLang with --weight-version 0)")

    # ------------------------------------------------------------------ lifecycle
    def release_memory(self) -> None:
        """Only on a server started with --enable-memory-saver: without it SGLang answers 200 and frees nothing."""
        if not self.server_info().get("enable_memory_saver"):
            if not self._warned_release:
                log.warning("%s runs without --enable-memory-saver: release_memory is skipped (it would free nothing)",
                            self.url)
                self._warned_release = True
            return
        self.request("POST", "/release_memory_occupation", {})

    def resume_memory(self) -> None:
        if self.server_info().get("enable_memory_saver"):
            self.request("POST", "/resume_memory_occupation", {})

    def abort(self) -> None:
        """Abort everything on the server (abort_all), including other clients' requests."""
        self.request("POST", "/abort_request", {"rid": "", "abort_all": True}, retry=False)

    def abort_inflight(self) -> int:
        """Abort only this client's in-flight requests, by rid; returns how many were sent."""
        with self._inflight_lock:
            rids = list(self._inflight)
        for rid in rids:
            self._abort_rid(rid)
        return len(rids)

    def _abort_rid(self, rid: str) -> None:
        try:  # best effort and uncounted: the server may be gone or the request already finished
            self.session.post(self.url + "/abort_request", json={"rid": rid}, timeout=(self.connect_timeout_s, 5.0))
        except requests.RequestException:
            pass

    def health(self) -> bool:
        try:
            return self.session.get(self.url + "/health", timeout=(self.connect_timeout_s, 10.0)).status_code == 200
        except requests.RequestException:
            return False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.abort_inflight()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for transport in (self._group, self._handles):
            if transport is not None:
                transport.close()
        self._group = self._handles = None
        self.session.close()
