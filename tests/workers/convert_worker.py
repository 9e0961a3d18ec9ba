"""torchrun worker: conversion jobs at one TP/PP layout (a launch costs seconds, so one runs many jobs).

Usage: convert_worker.py --tp T --pp P --out DIR [--tokens FILE] JOB [JOB ...] where JOB is one of
  to_mg:HF_DIR:MG_DIR            hf_to_megatron
  to_hf:MG_DIR:HF_OUT[:BYTES]    megatron_to_hf (optional max shard bytes)
  logits:MG_DIR:NAME:PAD         load with load_megatron_checkpoint, save gathered logits to OUT/NAME.pt;
                                 PAD=trainer builds the model with default options (vocab re-padded on load),
                                 PAD=portable builds it with the checkpoint's own vocab padding
  bad:HF_DIR:MG_DIR:NAME         hf_to_megatron must fail; rank 0 writes the message to OUT/NAME.err
  layout:TP:PP                   switch megatron's parallel state (ranks beyond TP*PP are data-parallel)
"""
import argparse
import os

import torch
import torch.distributed as dist
from model_worker import forward_logits  # same folder: tests/workers

from megatron_sgpo.model.build import ModelOptions, build_model
from megatron_sgpo.model.convert import (
    hf_to_megatron,
    load_megatron_checkpoint,
    megatron_to_hf,
    read_metadata,
)
from megatron_sgpo.model.hf_config import load_hf_config
from megatron_sgpo.platform.dist import destroy_parallel, init_parallel
from megatron_sgpo.platform.layout import ParallelLayout


def logits_job(layout, mg_dir, name, pad, tokens, out):
    from megatron.core import parallel_state

    cfg = load_hf_config(mg_dir)
    # "portable": the checkpoint's own padding; otherwise another divisor, so its vocab rows must be re-padded
    divisor = read_metadata(mg_dir)["make_vocab_size_divisible_by"] if pad == "portable" else 64
    options = ModelOptions(make_vocab_size_divisible_by=divisor)
    chunks = build_model(cfg, layout, options)
    load_megatron_checkpoint(chunks, mg_dir)
    res = forward_logits(chunks, tokens)
    first = parallel_state.get_tensor_model_parallel_rank() == 0 and parallel_state.get_data_parallel_rank() == 0
    if res is not None and first:
        torch.save({"logits": res["logits"][..., : cfg["vocab_size"]].clone()}, os.path.join(out, name + ".pt"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--tokens")
    p.add_argument("jobs", nargs="+")
    a = p.parse_args()
    torch.set_num_threads(1)
    layout = ParallelLayout(tp=a.tp, pp=a.pp)
    init_parallel(layout, seed=1)
    tokens = torch.load(a.tokens, weights_only=True) if a.tokens else None
    for job in a.jobs:
        kind, *args = job.split(":")
        if kind == "layout":
            from megatron.core import parallel_state

            parallel_state.destroy_model_parallel()
            layout = ParallelLayout(tp=int(args[0]), pp=int(args[1]))
            init_parallel(layout, seed=1)
        elif kind == "to_mg":
            hf_to_megatron(args[0], args[1], layout, progress=False)
        elif kind == "to_hf":
            extra = {"max_shard_bytes": int(args[2])} if len(args) > 2 else {}
            megatron_to_hf(args[0], args[1], layout, progress=False, **extra)
        elif kind == "logits":
            logits_job(layout, args[0], args[1], args[2], tokens, a.out)
        elif kind == "bad":
            try:
                hf_to_megatron(args[0], args[1], layout, progress=False)
            except Exception as exc:  # the expected outcome
                if dist.get_rank() == 0:
                    with open(os.path.join(a.out, args[2] + ".err"), "w") as f:
                        f.write(f"{type(exc).__name__}: {exc}")
            else:
                raise AssertionError(f"{job} did not fail")
        else:
            raise ValueError(f"unknown job {job!r}")
        dist.barrier()


if __name__ == "__main__":
    main()
    destroy_parallel()  # before interpreter exit: gloo's threads may otherwise abort the process
