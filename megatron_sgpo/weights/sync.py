"""The weight sync, the one owner of "trained shards → engines": gather, map, bucket, deliver.

Each pipeline stage turns its own layers into HF tensors on one *sender*, the stage's first TP rank of
DP replica 0 (:mod:`megatron_sgpo.weights.stage_tensors`); no other rank ever holds a full tensor.

Engine *servers* (SGLang, ``sgpo serve``, one or several) get each stage straight from its sender through
a transport of :mod:`megatron_sgpo.weights.transports`; stages send in parallel, and a sender gathers
bucket k+1 while bucket k is on its way. Rank 0 only opens and closes the engines' weight-update session
around the senders and checks that every engine serves the new version. An *in-process* engine (the
local engine, vLLM's ``LLM``) lives in rank 0's memory, so there the stages send to rank 0.

Engines a fleet has taken out of rotation (opening the session finds them dead) are left out of the sync. A
sync that fails on any sender is retried once from the start (every tensor is resent, after re-creating the
transports' connections); if it fails again every rank raises :class:`EngineError`, so the run stops instead
of sampling from a half-updated model.
"""
from __future__ import annotations

import socket
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import torch
import torch.distributed as dist

from megatron_sgpo.model.mapping import WeightMapping
from megatron_sgpo.platform.dist import device, rank_errors
from megatron_sgpo.rollout.engine import EngineError
from megatron_sgpo.weights.stage_tensors import buckets, stage_hf_tensors, stage_parameters

TRANSPORTS = ("tensor", "distributed", "disk")


def _is_sender() -> bool:
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0


def _stage_senders() -> list[int]:
    """Global rank of every stage's sender, in stage order, as seen by all ranks."""
    from megatron.core import parallel_state as ps

    stage = ps.get_pipeline_model_parallel_rank()
    mine = torch.tensor([stage if _is_sender() else -1, dist.get_rank()])
    everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    senders = {int(s): int(r) for s, r in everyone if s >= 0}
    return [senders[s] for s in sorted(senders)]


def collect_on_rank0(chunks, mapping: WeightMapping, dtype: torch.dtype | None = None,
                     held: dict | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """For an in-process engine: on global rank 0 yield every HF tensor, stage by stage; other stages'
    senders send theirs point to point (counted in ``held["full_tensors"]``). All ranks must consume the
    iterator (it drives the collectives)."""
    from megatron.core import parallel_state as ps

    rank = dist.get_rank()
    in_stage = ps.get_data_parallel_rank() == 0
    stage = ps.get_pipeline_model_parallel_rank()
    for s, src in enumerate(_stage_senders()):
        if rank == src == 0:
            yield from stage_hf_tensors(chunks, mapping, dtype)
        elif rank == src:
            local = list(stage_hf_tensors(chunks, mapping, dtype))
            if held is not None:
                held["full_tensors"] += len(local)
            dist.send_object_list([[(n, t.shape, t.dtype) for n, t in local]], dst=0)
            for _, tensor in local:
                dist.send(tensor.contiguous(), dst=0)
        elif in_stage and stage == s:  # a TP peer of this stage's sender: send it our shards
            for _ in stage_hf_tensors(chunks, mapping, dtype):
                pass
        elif rank == 0:
            meta = [None]
            dist.recv_object_list(meta, src=src)
            for name, shape, tdtype in meta[0]:
                buf = torch.empty(shape, dtype=tdtype, device=device())
                dist.recv(buf, src=src)
                yield name, buf


def _servers(engine) -> list | None:
    """The engine servers behind ``engine`` as (url, tp_size), or None for an in-process engine."""
    if engine is None:
        return None
    clients = getattr(engine, "clients", None)
    if clients is None and hasattr(engine, "url") and hasattr(engine, "request"):
        clients = [engine]
    if clients is None:
        return None
    live = set(id(c) for c in engine.live()) if hasattr(engine, "live") else None
    return [(c.url, c.tp_size) for c in clients if live is None or id(c) in live]


def _address_towards(urls: list[str]) -> str:
    """The address engines reach this sender at: loopback when they all run on this host."""
    from urllib.parse import urlparse

    hosts = {urlparse(u).hostname for u in urls}
    if hosts <= {"127.0.0.1", "localhost"}:
        return "127.0.0.1"
    return socket.gethostbyname(socket.gethostname())


class WeightSync:
    """Collective, built once per run on every rank: ``push(version)`` puts the policy into the engine(s).

    ``engine`` is rank 0's RolloutEngine (None elsewhere). ``transport`` (rollout.weight_sync) applies to
    engine servers: "tensor" (shared-memory/CUDA-IPC handles), "distributed" (broadcast group) or "disk"
    (safetensors files in ``disk_dir``, reloaded by the engines; ``side_dir`` gives config and tokenizer)."""

    def __init__(self, chunks, mapping: WeightMapping, engine, transport: str = "tensor",
                 bucket_bytes: int = 256 * 2**20, dtype: torch.dtype | None = None, disk_dir: str = "",
                 side_dir: str = ""):
        from megatron.core import parallel_state as ps

        if transport not in TRANSPORTS:
            raise ValueError(f"weight transport must be one of {TRANSPORTS}, got {transport!r}")
        if bucket_bytes <= 0:
            raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
        self.chunks, self.mapping, self.engine, self.transport_name = chunks, mapping, engine, transport
        self.bucket_bytes, self.dtype, self.disk_dir, self.side_dir = bucket_bytes, dtype, disk_dir, side_dir
        self.rank = dist.get_rank()
        self.stage = ps.get_pipeline_model_parallel_rank()
        box = [_servers(engine) if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        self.servers = box[0]
        self.remote = self.servers is not None
        if not self.remote and transport != "tensor":
            raise ValueError(f"weight transport {transport!r} needs engine servers; an in-process engine takes the "
                             f"tensors directly (use 'tensor')")
        if transport == "disk" and not disk_dir:
            raise ValueError("weight transport 'disk' needs a folder shared with the engines (disk_dir)")
        self.senders = _stage_senders()
        self.sender = self.remote and self.rank in self.senders
        self._params = stage_parameters(chunks, mapping)
        self._transport = self._scratch = None

        def make():
            self._transport = self._make_transport()

        self._agree(self._in_stage_order(make), "weight sync set-up")
        self._pool = (ThreadPoolExecutor(self._transport.in_flight, thread_name_prefix="sync-send")
                      if self.sender else None)

    def _in_stage_order(self, fn) -> Exception | None:
        """Collective: ``fn`` on each stage's sender, one stage after the other; this rank's error, if any. An
        SGLang engine joins one broadcast group at a time and blocks until that group is complete, so groups set
        up by several stages at once can deadlock: each engine busy joining the group another engine has not
        reached yet."""
        error = None
        from megatron.core import parallel_state as ps

        for stage in range(ps.get_pipeline_model_parallel_world_size()):
            if self.sender and self.stage == stage:
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001  every rank must learn of it (collective by the caller)
                    error = exc
            dist.barrier()
        return error

    def _make_transport(self):
        from megatron.core import parallel_state as ps

        from megatron_sgpo.rollout.sglang import SGLangClient
        from megatron_sgpo.weights.transports import (
            BroadcastTransport,
            DiskTransport,
            HandleTransport,
            SharedScratch,
            share_cpu_parameters,
        )

        clients = [SGLangClient(url, tp_size=tp) for url, tp in self.servers]
        if self.transport_name == "tensor":
            # at TP=1 the stage's HF tensors are views of its parameters, or regrouped query heads: engines on
            # this host read both from shared memory, with no copy into a staging buffer
            on_cpu = all(p.device.type == "cpu" for _, p, _ in self._params)
            if on_cpu and ps.get_tensor_model_parallel_world_size() == 1 and self._scratch is None:
                share_cpu_parameters(self.chunks)
                self._scratch = SharedScratch()
            return HandleTransport(clients)
        if self.transport_name == "disk":
            return DiskTransport(clients, self.disk_dir, self.stage)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        return BroadcastTransport(clients, backend, _address_towards([u for u, _ in self.servers]),
                                  group_name=f"sgpo_stage{self.stage}")

    # ------------------------------------------------------------------ one sync
    def push(self, version: int) -> dict:
        """Collective: every rank calls it after the optimizer step. Returns this rank's counts, including
        ``full_tensors`` (how many full HF tensors this rank held: zero unless it is a sender or rank 0 of an
        in-process engine) and, for engine servers, ``packed_bytes`` (what a sender copied into staging buffers:
        zero when the engines read its parameters' shared memory)."""
        if not self.remote:
            return self._push_in_process(version)
        for attempt in (1, 2):
            stats, error = self._attempt(version)
            failed = rank_errors(error)
            if not failed:
                self._check_versions(version)
                return stats
            if attempt == 1:
                unjoined = rank_errors(self._in_stage_order(lambda: self._transport.reconnect()))
                if unjoined:
                    failed = unjoined
                    break
                continue
        raise EngineError(f"weight sync to version {version} failed twice; engines may hold a partial update and "
                          f"must not serve: " + "; ".join(f"rank {r}: {e}" for r, e in failed))

    def _attempt(self, version: int) -> tuple[dict, Exception | None]:
        from megatron_sgpo.weights.transports import DiskTransport

        session = self.transport_name != "disk"
        error = None
        if self.rank == 0:
            try:
                if session:
                    self.engine.begin_weight_update(version)
                else:
                    DiskTransport.reset(self.disk_dir)
            except Exception as exc:  # noqa: BLE001
                error = exc
                if session:  # engines that did open theirs must not keep it open for the retry
                    try:
                        self.engine.end_weight_update(version)
                    except Exception:  # noqa: BLE001  the first error is the one to report
                        pass
        opened = not rank_errors(error)  # senders wait for the session to exist
        stats = {"bytes": 0, "tensors": 0, "buckets": 0, "full_tensors": 0, "packed_bytes": 0}
        if opened:
            self._follow_fleet()
            error = self._stream(version, stats)
            if not rank_errors(error) and self.rank == 0 and not session:
                try:
                    DiskTransport.publish(self._transport.clients, self.disk_dir, self.side_dir, version)
                except Exception as exc:  # noqa: BLE001
                    error = exc
            if self.rank == 0 and session:
                try:
                    self.engine.end_weight_update(version)
                except Exception as exc:  # noqa: BLE001
                    error = error or exc
        return stats, error

    def _follow_fleet(self) -> None:
        """Collective: send to the engines rank 0's fleet still has in rotation (opening the session takes a dead
        engine out), re-making the senders' transports when that set changed."""
        box = [_servers(self.engine) if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        if box[0] == self.servers:
            return
        self.servers, error = box[0], None
        if self.sender:
            try:
                self._transport.close()
                self._transport = self._make_transport()
            except Exception as exc:  # noqa: BLE001  every rank must learn of it
                error = exc
        self._agree(error, "weight sync to the engines left in rotation")

    def _stream(self, version: int, stats: dict) -> Exception | None:
        """Senders: gather and send bucket by bucket, up to the transport's ``in_flight`` buckets on their way
        while the next is gathered; TP peers: send shards."""
        named = (stage_hf_tensors(self.chunks, self.mapping, self.dtype, self._params, self._scratch)
                 if self._takes_part() else iter(()))
        if not self.sender:
            for _ in named:
                stats["full_tensors"] += 1
            return None
        pending, error = deque(), None
        packed = getattr(self._transport, "packed_bytes", 0)
        try:
            for bucket in buckets(named, self.bucket_bytes):
                while len(pending) >= self._transport.in_flight:
                    pending.popleft().result()
                pending.append(self._pool.submit(self._transport.send, bucket, version))
                stats["buckets"] += 1
                stats["tensors"] += len(bucket)
                stats["full_tensors"] += len(bucket)
                stats["bytes"] += sum(t.numel() * t.element_size() for _, t in bucket)
            while pending:
                pending.popleft().result()
            stats["packed_bytes"] = getattr(self._transport, "packed_bytes", 0) - packed
        except Exception as exc:  # noqa: BLE001  a failed send: reported to every rank by the caller
            error = exc
            for _ in named:  # finish the gathers, so the TP peers are not left waiting in one
                pass
            for p in pending:  # no send may still write into the engines when the caller retries
                p.exception()
        return error

    def _takes_part(self) -> bool:
        from megatron.core import parallel_state as ps

        return ps.get_data_parallel_rank() == 0

    def _push_in_process(self, version: int) -> dict:
        held = {"full_tensors": 0}
        named = collect_on_rank0(self.chunks, self.mapping, self.dtype, held)
        if self.rank != 0:
            for _ in named:
                pass
            return {"bytes": 0, "tensors": 0, "buckets": 0, **held}
        return deliver(self.engine, named, version, self.bucket_bytes)

    def _check_versions(self, version: int) -> None:
        error = None
        if self.rank == 0 and hasattr(self.engine, "check_versions"):
            try:
                self.engine.check_versions(version)
            except Exception as exc:  # noqa: BLE001
                error = exc
        self._agree(error, "weight version check")

    # ------------------------------------------------------------------ agreement
    def _agree(self, error: Exception | None, what: str) -> None:
        failed = rank_errors(error)
        if failed:
            raise EngineError(f"{what} failed: " + "; ".join(f"rank {r}: {e}" for r, e in failed))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def sync_weights(chunks, mapping: WeightMapping, engine, version: int, bucket_bytes: int = 256 * 2**20,
                 dtype: torch.dtype | None = None, transport: str = "tensor", **kw) -> dict:
    """One sync through a :class:`WeightSync` made for it (tests, benchmarks); runs keep theirs."""
    sync = WeightSync(chunks, mapping, engine, transport, bucket_bytes, dtype, **kw)
    try:
        return sync.push(version)
    finally:
        sync.close()


def deliver(engine, named, version: int, bucket_bytes: int) -> dict:
    """Rank 0 of an in-process engine: the buckets of ``named`` inside one weight-update session, which is
    closed also when a bucket fails."""
    stats = {"bytes": 0, "tensors": 0, "buckets": 0, "full_tensors": 0}
    engine.begin_weight_update(version)
    try:
        for bucket in buckets(named, bucket_bytes):
            engine.update_weights(bucket, version=version)
            stats["buckets"] += 1
            stats["tensors"] += len(bucket)
            stats["full_tensors"] += len(bucket)
            stats["bytes"] += sum(t.numel() * t.element_size() for _, t in bucket)
    finally:
        engine.end_weight_update(version)
    return stats
