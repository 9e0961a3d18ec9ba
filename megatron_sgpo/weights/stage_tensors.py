"""One pipeline stage's weights as HF tensors, in buckets: what a weight sync sends, on the stage's sender.

The sender is the stage's first TP rank of DP replica 0: TP shards are gathered to it (its TP peers only send
their shard, so no other rank ever holds a full tensor), mapped with :class:`WeightMapping` (vocab padding
trimmed, fused QKV and gate/up split) and cast to the engine's dtype, on the device the policy lives on.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist

from megatron_sgpo.model.load import unwrap
from megatron_sgpo.model.mapping import Rule, WeightMapping, global_names

Named = list[tuple[str, torch.Tensor]]


def _gather_tp(param: torch.Tensor, replicated: bool) -> list[torch.Tensor] | None:
    """All TP shards of ``param`` on the stage's sender (None elsewhere); TP peers only send theirs."""
    from megatron.core import parallel_state as ps

    tp = ps.get_tensor_model_parallel_world_size()
    if replicated or tp == 1:
        return [param.detach()] if ps.get_tensor_model_parallel_rank() == 0 else None
    group = ps.get_tensor_model_parallel_group()
    sender = dist.get_global_rank(group, 0)
    local = param.detach().contiguous()
    if dist.get_rank() == sender:
        shards = [torch.empty_like(local) for _ in range(tp)]
        dist.gather(local, shards, dst=sender, group=group)
        return shards
    dist.gather(local, None, dst=sender, group=group)
    return None


def stage_parameters(chunks, mapping: WeightMapping) -> list[tuple[str, torch.Tensor, Rule]]:
    """This stage's parameters as (global megatron name, parameter, HF rule), in sync order; built once per run.
    With tied embeddings the last stage's copy of the output weight is left out: the first stage sends the
    embedding, the same tensor."""
    out = []
    for chunk in chunks:
        model = unwrap(chunk)
        params = dict(model.named_parameters())
        for local, name in global_names(model).items():
            if not (mapping.tied and name == "output_layer.weight"):
                out.append((name, params[local], mapping.rule(name)))
    return out


def stage_hf_tensors(chunks, mapping: WeightMapping, dtype: torch.dtype | None = None, params=None,
                     scratch=None) -> Iterator[tuple[str, torch.Tensor]]:
    """This stage's parameters as HF (name, full tensor) pairs, yielded on the stage's first TP rank only;
    its TP peers must iterate too (they send their shards) and get nothing. ``params``: the stage's
    :func:`stage_parameters`, if already built; ``scratch``: where the mapping writes the tensors it must copy
    (see :meth:`WeightMapping.to_hf`)."""
    seen = set()
    for name, param, rule in params if params is not None else stage_parameters(chunks, mapping):
        shards = _gather_tp(param, rule.kind == "replicated")
        if shards is None:
            continue
        for hf_name, tensor in mapping.to_hf(name, shards, scratch):
            if hf_name not in seen:
                seen.add(hf_name)
                yield hf_name, (tensor.to(dtype) if dtype is not None else tensor)


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
