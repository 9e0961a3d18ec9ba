"""Writing megatron model chunks as an HF safetensors folder (the converter's and the trainer's export).

Why one writer for both: a run's policy and a converted checkpoint must come out byte-compatible with what
transformers loads, through the same mapping the weight sync uses. Every rank passes its chunks; TP shards are
all-gathered one parameter at a time and other pipeline stages send theirs to rank 0, which alone writes
(memory: one parameter plus one output shard). Output goes to a temp folder renamed into place at the end.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist

from megatron_sgpo.model.convert import OutputDir, Summary, agree_all_ranks, global_rank, progress_bar
from megatron_sgpo.model.hf_io import ShardedWriter, copy_side_files
from megatron_sgpo.model.load import unwrap
from megatron_sgpo.model.mapping import WeightMapping, global_names
from megatron_sgpo.platform.layout import ParallelLayout


def _export_order(name: str) -> tuple:
    """HF-like order: embedding, layers by index, final norm, output layer."""
    if name.startswith("decoder.layers."):
        return (1, int(name.split(".")[2]), name)
    return ({"embedding.word_embeddings.weight": 0, "decoder.final_layernorm.weight": 2}.get(name, 3), 0, name)


def _local_params(chunks, mapping: WeightMapping) -> dict:
    params = {}
    for model in map(unwrap, chunks):
        named = dict(model.named_parameters())
        for local, name in global_names(model).items():
            if not (name == "output_layer.weight" and mapping.tied):  # the embedding is written once
                params[name] = named[local].detach()
    return params


def write_hf(chunks, cfg: dict, layout: ParallelLayout, meta: dict, side_dir: str, out_dir: str,
             max_shard_bytes: int = 5 * 10**9, overwrite: bool = False, progress: bool = True,
             started: float | None = None) -> Summary:
    """Collective: write the GPTModel ``chunks`` of every rank as an HF folder at ``out_dir``.

    ``meta`` is the checkpoint metadata (vocab padding, HF dtype; :func:`megatron_sgpo.model.convert.
    model_metadata`); config and tokenizer files are copied from ``side_dir``.
    """
    from megatron.core import parallel_state as ps

    t0 = time.time() if started is None else started
    mapping = WeightMapping(cfg, layout.tp, meta["make_vocab_size_divisible_by"])
    hf_dtype = getattr(torch, meta.get("hf_dtype", "float32"))
    out = OutputDir(out_dir, overwrite)
    try:
        params = _local_params(chunks, mapping)
        tp_rank, pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
        first_replica = ps.get_data_parallel_rank() == 0  # data-parallel replicas hold copies: skip them
        listing = [None] * dist.get_world_size()
        mine = [(n, tuple(p.shape), str(p.dtype)) for n, p in params.items()] if tp_rank == 0 and first_replica else []
        dist.all_gather_object(listing, (dist.get_rank(), pp_rank, mine))
        plan = sorted(((n, shape, dt, src, pp) for src, pp, items in listing for n, shape, dt in items),
                      key=lambda x: _export_order(x[0]))
        writer = ShardedWriter(out.tmp, max_shard_bytes) if global_rank() == 0 else None
        tp_group = ps.get_tensor_model_parallel_group()
        with progress_bar(len(plan), "megatron -> HF", progress) as bar:
            for name, shape, dt, src, pp in plan:
                shards = None
                if pp == pp_rank and first_replica:
                    local = params[name].contiguous()
                    shards = [torch.empty_like(local) for _ in range(layout.tp)]
                    dist.all_gather(shards, local, group=tp_group)
                if pp != 0 and global_rank() in (0, src):
                    if global_rank() == src:
                        for s in shards:
                            dist.send(s, dst=0)
                    else:
                        shards = [torch.empty(shape, dtype=getattr(torch, dt.split(".")[1])) for _ in range(layout.tp)]
                        for s in shards:
                            dist.recv(s, src=src)
                if writer is not None:
                    for hf_name, tensor in mapping.to_hf(name, shards):
                        writer.add(hf_name, tensor.to(hf_dtype))
                bar.update(1)
        error = None
        if writer is not None:
            try:
                writer.close()
                copy_side_files(side_dir, out.tmp)
            except OSError as exc:
                error = exc
        agree_all_ranks(error)
        out.commit()
    except BaseException:
        out.abort()
        raise
    tensors, nbytes = (len(writer.weight_map), writer.total_bytes) if writer else (0, 0)
    return Summary("megatron -> HF", tensors, nbytes, time.time() - t0, out.final)
