"""A torch.distributed group for weight broadcast that lives beside any default group.

A sender (rank 0, hosting the TCP store) and engine ranks (rank_offset + tp_rank) meet at
`master_address:master_port`, with keys prefixed by the group name — the store SGLang's
`/init_weights_update_group` connects to, so the sender side here also works against a real
SGLang server. Gloo on CPU, NCCL on GPU.
"""
from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d


def init_weight_group(
    backend: str,
    master_address: str,
    master_port: int,
    world_size: int,
    rank: int,
    group_name: str = "weight_update_group",
    timeout_s: float = 120.0,
) -> dist.ProcessGroup:
    """Join (rank > 0) or host (rank 0) a named group; blocks until all ranks arrive."""
    timeout = timedelta(seconds=timeout_s)
    # A TCPStore of our own, not c10d.rendezvous: under torchrun, rendezvous assumes the elastic agent hosts
    # the store (TORCHELASTIC_USE_AGENT_STORE) and rank 0 would wait for a host that never comes.
    store = dist.TCPStore(master_address, int(master_port), world_size, is_master=rank == 0, timeout=timeout)
    store = c10d.PrefixStore(group_name, store)
    device_id = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else None
    pg, _ = c10d._new_process_group_helper(
        world_size, rank, [], c10d.Backend(backend), store, group_name=group_name,
        timeout=timeout, device_id=device_id,
    )
    # Lets torch.distributed.broadcast(..., group=pg) translate global ranks without a default group.
    c10d._world.pg_group_ranks[pg] = {i: i for i in range(world_size)}
    return pg


def destroy_weight_group(pg: dist.ProcessGroup) -> None:
    """Forget a group made by init_weight_group (its store connection closes with it)."""
    c10d._world.pg_group_ranks.pop(pg, None)
    try:
        pg.shutdown() if hasattr(pg, "shutdown") else None
    except Exception:  # best effort: the peer may already be gone
        pass


def torch_dtype(name: str) -> torch.dtype:
    """'bfloat16' or 'torch.bfloat16' → torch.bfloat16 (SGLang sends the bare name)."""
    dt = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dt


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
