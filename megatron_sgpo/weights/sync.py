"""The weight sync, the one owner of "trained shards → engine": gather, map, bucket, deliver.

Each pipeline stage turns its own layers into HF tensors: TP shards are all-gathered over the TP
group, mapped with :class:`WeightMapping` (vocab padding trimmed, fused QKV and gate/up split), and
cast to the engine's dtype. Only the first TP/DP rank of each stage keeps the result, in host
memory. Stages other than rank 0's send their tensors to global rank 0, which cuts the stream into
buckets of at most ``bucket_bytes`` (here, and nowhere else) and hands each bucket to the engine's
``update_weights``; how a bucket travels (in-process copy, shared-memory tensor handles, a broadcast
group) is the engine client's transport, in :mod:`megatron_sgpo.weights.tensor_handles` and
:mod:`megatron_sgpo.weights.broadcast_group`.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist

from megatron_sgpo.model.load import unwrap
from megatron_sgpo.model.mapping import WeightMapping, global_names

Named = list[tuple[str, torch.Tensor]]


def _gather_tp(param: torch.Tensor, replicated: bool) -> list[torch.Tensor]:
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    if replicated or tp == 1:
        return [param.detach()]
    shards = [torch.empty_like(param) for _ in range(tp)]
    dist.all_gather(shards, param.detach().contiguous(), group=parallel_state.get_tensor_model_parallel_group())
    return shards


def stage_hf_tensors(chunks, mapping: WeightMapping,
                     dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """This stage's parameters as HF (name, full tensor) pairs. Every TP rank must iterate (all-gathers);
    the values are meaningful on all of them. With tied embeddings the last stage's copy of the output
    weight is skipped: the first stage sends the embedding, which is the same tensor."""
    seen = set()
    for chunk in chunks:
        model = unwrap(chunk)
        params = dict(model.named_parameters())
        for local, name in global_names(model).items():
            if mapping.tied and name == "output_layer.weight":
                continue
            rule = mapping.rule(name)
            shards = _gather_tp(params[local], rule.kind == "replicated")
            for hf_name, tensor in mapping.to_hf(name, shards):
                if hf_name in seen:
                    continue
                seen.add(hf_name)
                yield hf_name, (tensor.to(dtype) if dtype is not None else tensor).cpu()


def buckets(named, bucket_bytes: int) -> Iterator[Named]:
    """Group (name, tensor) pairs into lists of at most ``bucket_bytes`` (a larger tensor goes alone)."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    bucket, size = [], 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def _stage_sources() -> list[int]:
    """Global rank of (pp stage s, tp rank 0, dp rank 0) for every stage s, as seen by all ranks."""
    from megatron.core import parallel_state

    is_source = (parallel_state.get_tensor_model_parallel_rank() == 0
                 and parallel_state.get_data_parallel_rank() == 0)
    stage = parallel_state.get_pipeline_model_parallel_rank()
    mine = torch.tensor([stage if is_source else -1, dist.get_rank()])
    everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    sources = {int(s): int(r) for s, r in everyone if s >= 0}
    return [sources[s] for s in sorted(sources)]


def collect_on_rank0(chunks, mapping: WeightMapping,
                     dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """On global rank 0, yield every HF tensor of the model, stage by stage; elsewhere, send and yield nothing.

    All ranks must consume the iterator (it drives the collectives). Data-parallel replicas hold the same
    weights, so only DP rank 0 of each stage gathers; rank 0's own stage is streamed, other stages' first
    TP rank sends its tensors to rank 0 point to point.
    """
    from megatron.core import parallel_state

    rank = dist.get_rank()
    gathers = parallel_state.get_data_parallel_rank() == 0
    stage = parallel_state.get_pipeline_model_parallel_rank()
    for s, src in enumerate(_stage_sources()):
        if rank == src == 0:
            yield from stage_hf_tensors(chunks, mapping, dtype)
        elif rank == src:
            local = list(stage_hf_tensors(chunks, mapping, dtype))
            dist.send_object_list([[(n, t.shape, t.dtype) for n, t in local]], dst=0)
            for _, tensor in local:
                dist.send(tensor.contiguous(), dst=0)
        elif gathers and stage == s:  # a TP peer of this stage's source: take part in its all-gathers
            for _ in stage_hf_tensors(chunks, mapping, dtype):
                pass
        elif rank == 0:
            meta = [None]
            dist.recv_object_list(meta, src=src)
            for name, shape, tdtype in meta[0]:
                buf = torch.empty(shape, dtype=tdtype)
                dist.recv(buf, src=src)
                yield name, buf


def sync_weights(chunks, mapping: WeightMapping, engine, version: int, bucket_bytes: int = 256 * 2**20,
                 dtype: torch.dtype | None = None) -> dict:
    """Push the policy's current weights to ``engine`` (on global rank 0). Returns bytes and tensor counts."""
    sent = {"bytes": 0, "tensors": 0, "buckets": 0}
    named = collect_on_rank0(chunks, mapping, dtype)
    if dist.get_rank() != 0:
        for _ in named:
            pass
        return sent

    engine.begin_weight_update(version)
    try:
        for bucket in buckets(named, bucket_bytes):
            engine.update_weights(bucket, version=version)
            sent["buckets"] += 1
            sent["tensors"] += len(bucket)
            sent["bytes"] += sum(t.numel() * t.element_size() for _, t in bucket)
    finally:
        engine.end_weight_update(version)
    return sent
