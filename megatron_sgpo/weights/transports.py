"""How one sender's buckets reach every engine server: tensor handles, a broadcast group, or disk.

A *sender* is the rank that holds one pipeline stage's full HF tensors (see :mod:`.sync`); it talks to
the engines directly over their HTTP API, never through rank 0. Each transport sends one bucket to all
engines at once:

- :class:`HandleTransport` posts SGLang's ``/update_weights_from_tensor`` with shared-memory handles
  (CUDA IPC on GPU, file-system shared memory on CPU): colocated engines map the sender's memory.
- :class:`BroadcastTransport` posts ``/update_weights_from_distributed`` to every engine and broadcasts
  each tensor once over a group of this sender (rank 0) and every engine rank (NCCL on GPU, gloo on
  CPU), created once (under a fresh name each time) and re-created after an engine restart (:meth:`reconnect`).
- :class:`DiskTransport` writes safetensors files into a folder shared with the engines; the
  coordinator then asks every engine to reload it (``/update_weights_from_disk``).

The transports only need each client's ``url``, ``tp_size`` and ``request`` (an :class:`SGLangClient`).
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import torch

from megatron_sgpo.weights.broadcast_group import destroy_weight_group, dtype_name, init_weight_group
from megatron_sgpo.weights.tensor_handles import (
    FLATTENED,
    flatten_bucket,
    serialize_handles,
    unflatten_bucket,
    use_file_system_sharing,
)


def _all(pool: ThreadPoolExecutor, fn, clients) -> list:
    """``fn(client)`` for every client concurrently; the first error is raised after all have finished."""
    futures = [pool.submit(fn, c) for c in clients]
    errors = [f.exception() for f in futures]
    for e in errors:
        if e is not None:
            raise e
    return [f.result() for f in futures]


class HandleTransport:
    """The same bucket posted to every engine as handles, pickled once per engine TP rank.

    Tensors in CPU shared memory (a TP=1 stage's parameters, once :func:`share_cpu_parameters` has moved them)
    go as they are: the engines copy straight from the trainer's weights. The others are packed into one of
    ``in_flight`` flat buffers, and bucket k+1 is packed while the engines load bucket k. On CPU the buffers are
    shared memory kept for the whole run: packing is one copy into memory the engines have mapped before, and
    pickling sends its name rather than moving the bytes. A buffer is reused only once every engine has answered
    for the bucket it held."""

    in_flight = 2

    def __init__(self, clients):
        self.clients = list(clients)
        self.packed_bytes = 0  # copied into the staging buffers so far: none for buckets of shared parameters
        self._pool = ThreadPoolExecutor(max(1, len(self.clients)) * self.in_flight, thread_name_prefix="sync-handles")
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.in_flight):
            self._free.put({})

    def send(self, bucket, version: int) -> None:
        slot = self._free.get()  # one per send in flight, so this never waits
        try:
            obj, load_format = self._pack(bucket, slot)
            # one pickling per receiving rank: each adds the reference to the shared-memory file that its receiver
            # takes over, so a file a second receiver opens is never unlinked under the sender's reused buffer
            payloads = {id(c): [serialize_handles(obj) for _ in range(c.tp_size)] for c in self.clients}
            _all(self._pool, lambda c: c.request(
                "POST", "/update_weights_from_tensor",
                {"serialized_named_tensors": payloads[id(c)], "load_format": load_format,
                 "weight_version": str(int(version)), "flush_cache": False}, retry=False), self.clients)
        finally:
            if slot.get("buffer") is not None and slot["buffer"].device.type != "cpu":
                slot.clear()  # the CUDA caching allocator reuses the memory anyway; hold none through training
            self._free.put(slot)

    def _pack(self, bucket, slot: dict):
        """The payload and its ``load_format``: tensors outside CPU shared memory are copied into the slot's
        buffer; a bucket of only those goes as that one flat buffer, any other as a handle per tensor, the shared
        ones as they are (no copy) and the rest as views of the buffer."""
        named = [(str(n), t.detach()) for n, t in bucket]
        shared = [in_shared_memory([x]) for x in named]
        if all(shared):
            return named, None
        flat = flatten_bucket([x for x, s in zip(named, shared) if not s], lambda n, d: staging_buffer(slot, n, d))
        self.packed_bytes += flat["flattened_tensor"].numel()
        if not any(shared):
            return flat, FLATTENED
        packed = iter(unflatten_bucket(flat))
        return [x if s else next(packed) for x, s in zip(named, shared)], None

    def reconnect(self) -> None:
        """Nothing to re-create: every bucket is a self-contained request."""

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        while not self._free.empty():
            self._free.get().clear()


SHARED_MEMORY_DIR = "/dev/shm"  # where torch's file-system sharing puts its files on Linux


def share_cpu_parameters(modules) -> int:
    """Move the storages of the modules' CPU parameters into shared memory, in place (every view follows them),
    once per run: the HF tensors of a TP=1 stage are views of them, which the engines then map and copy from with
    no copy on the sender. Returns the bytes moved. CUDA parameters are left alone."""
    use_file_system_sharing()  # a file another process can open by name, not a descriptor of ours
    storages = {}
    for module in modules:
        for param in module.parameters():
            storage = param.untyped_storage()
            if param.device.type == "cpu" and not storage.is_shared():
                storages[storage.data_ptr()] = storage
    moved = sum(s.nbytes() for s in storages.values())
    free = shutil.disk_usage(SHARED_MEMORY_DIR).free if os.path.isdir(SHARED_MEMORY_DIR) else moved
    if moved > free:
        raise RuntimeError(f"rollout.weight_sync=tensor keeps this stage's {moved / 2**30:.2f} GiB of parameters in "
                           f"shared memory, but {SHARED_MEMORY_DIR} has {free / 2**30:.2f} GiB free: enlarge it "
                           f"(docker run --shm-size) or use rollout.weight_sync=distributed")
    for storage in storages.values():
        storage.share_memory_()
    return moved


class SharedScratch:
    """Where the weight mapping writes the tensors it must copy (:meth:`WeightMapping.to_hf`): CPU shared memory,
    one tensor per HF name, kept for the run. Those tensors then go to the engines as they are, like the
    parameters: no second copy into a staging buffer, and no fresh pages to fault in at every sync."""

    def __init__(self):
        self._held: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        held = self._held.get(name)
        if held is None or held.shape != torch.Size(shape) or held.dtype != dtype:
            use_file_system_sharing()
            held = self._held[name] = torch.empty(shape, dtype=dtype).share_memory_()
        return held


def in_shared_memory(bucket) -> bool:
    """Every tensor of the bucket lies in CPU shared memory (see :func:`share_cpu_parameters`)."""
    return all(t.device.type == "cpu" and t.untyped_storage().is_shared() for _, t in bucket)


def staging_buffer(slot: dict, nbytes: int, device: torch.device) -> torch.Tensor:
    """The first ``nbytes`` of the slot's buffer, (re)allocated when too small or on another device."""
    buf = slot.get("buffer")
    if buf is None or buf.numel() < nbytes or buf.device != device:
        slot.pop("buffer", None)
        buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        if device.type == "cpu":
            use_file_system_sharing()  # a file another process can open by name, not a descriptor of ours
            buf.share_memory_()
        slot["buffer"] = buf
    return buf[:nbytes]


class BroadcastTransport:
    """This sender is rank 0 of a group that holds every rank of every engine; one broadcast feeds them all."""

    in_flight = 1  # every engine receives the broadcasts in the order they were posted

    def __init__(self, clients, backend: str, address: str, group_name: str, timeout_s: float = 120.0,
                 port: int | None = None):
        self.clients = list(clients)
        self.backend, self.address, self.base_name, self.timeout_s = backend, address, group_name, timeout_s
        self.group_name = group_name
        self._fixed_port = port
        self._pool = ThreadPoolExecutor(max(1, len(self.clients)) + 1, thread_name_prefix="sync-broadcast")
        self._pg = None
        self.connect()

    @property
    def world_size(self) -> int:
        return 1 + sum(c.tp_size for c in self.clients)

    def connect(self) -> None:
        """Every engine joins (its HTTP call returns once the group exists) while this sender hosts it."""
        from megatron_sgpo.platform.dist import free_port

        port = self._fixed_port or free_port()
        # a fresh name per connection: torch keeps a name taken for the life of the engine process
        self.group_name = f"{self.base_name}_{uuid.uuid4().hex[:8]}"
        offsets = [1 + sum(c.tp_size for c in self.clients[:i]) for i in range(len(self.clients))]
        joins = [self._pool.submit(c.request, "POST", "/init_weights_update_group",
                                   {"master_address": self.address, "master_port": port, "rank_offset": off,
                                    "world_size": self.world_size, "group_name": self.group_name,
                                    "backend": self.backend}, self.timeout_s, False)
                 for c, off in zip(self.clients, offsets)]
        try:
            self._pg = init_weight_group(self.backend, self.address, port, self.world_size, 0, self.group_name,
                                         self.timeout_s)
        finally:
            for j in joins:
                j.result()

    def reconnect(self) -> None:
        """After an engine restart its side of the group is gone: tear ours down and build a new one."""
        self._drop()
        self.connect()

    def send(self, bucket, version: int) -> None:
        dev = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")
        items = [(n, t.detach().to(dev).contiguous()) for n, t in bucket]
        body = {"names": [n for n, _ in items], "dtypes": [dtype_name(t.dtype) for _, t in items],
                "shapes": [list(t.shape) for _, t in items], "group_name": self.group_name,
                "weight_version": str(int(version)), "flush_cache": False}
        posts = [self._pool.submit(c.request, "POST", "/update_weights_from_distributed", body, None, False)
                 for c in self.clients]
        works = [torch.distributed.broadcast(t, src=0, group=self._pg, async_op=True) for _, t in items]
        while not all(w.is_completed() for w in works):
            failed = [p.exception() for p in posts if p.done() and p.exception() is not None]
            if failed:  # an engine refused the update: it will never join these broadcasts
                raise failed[0]
            time.sleep(0.002)
        for p in posts:
            p.result()

    def _drop(self) -> None:
        """Ours, then the engines' side (best effort: an engine that restarted has no such group)."""
        if self._pg is None:
            return
        destroy_weight_group(self._pg)
        self._pg = None
        for c in self.clients:
            try:
                c.request("POST", "/destroy_weights_update_group", {"group_name": self.group_name}, 10.0, False)
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        self._drop()
        self._pool.shutdown(wait=True)


class DiskTransport:
    """Senders write ``stage<S>-<K>.safetensors`` into ``folder``; :meth:`publish` (one process) adds the index
    and the config and tokenizer files, then every engine reloads the folder. Needs a file system shared by
    the senders and the engines."""

    in_flight = 1

    def __init__(self, clients, folder: str, stage: int):
        self.clients, self.folder, self.stage = list(clients), folder, stage
        self._count = 0

    def send(self, bucket, version: int) -> None:
        from safetensors.torch import save_file

        from megatron_sgpo.model.hf_io import own_bytes

        os.makedirs(self.folder, exist_ok=True)
        name = f"stage{self.stage}-{self._count:05d}.safetensors"
        save_file({n: own_bytes(t) for n, t in bucket}, os.path.join(self.folder, name + ".tmp"),
                  metadata={"format": "pt"})
        os.replace(os.path.join(self.folder, name + ".tmp"), os.path.join(self.folder, name))
        self._count += 1

    @staticmethod
    def reset(folder: str) -> None:
        """Empty the folder before a sync, so no file of an earlier one is reloaded."""
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)

    @staticmethod
    def publish(clients, folder: str, side_dir: str, version: int) -> None:
        """Write the index and side files, then reload every engine from ``folder`` at ``version``."""
        from safetensors import safe_open

        from megatron_sgpo.model.hf_io import INDEX, copy_side_files

        weight_map = {}
        for name in sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")):
            with safe_open(os.path.join(folder, name), "pt") as f:
                weight_map.update({key: name for key in f.keys()})
        with open(os.path.join(folder, INDEX), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
        copy_side_files(side_dir, folder)
        with ThreadPoolExecutor(max(1, len(clients))) as pool:
            _all(pool, lambda c: c.update_weights_from_disk(folder, version), clients)

    def reconnect(self) -> None:
        """Files need no connection."""

    def close(self) -> None:
        """Nothing held open."""
