"""torchrun worker: per transport, train one step at TP/PP, sync straight from the stage senders to every engine
server, let each engine sample greedily and score those tokens with the trainer.

Usage: fleet_sync_worker.py --hf DIR --out DIR --urls URL [URL ...] [--tp T] [--pp P] [--transports ...]
                             [--dead-url URL]   (then one more sync, to the engines and a dead one: it must fail)
Writes ``engines.pt`` (rank 0: per transport, every engine's sequences, log-probs and weight version, and every
rank's sync counts) and ``trainer.pt`` (last stage, first TP rank: the trainer's log-probs of those sequences).
"""
import os
import time

import torch
import torch.distributed as dist
from sync_worker import load_policy, parse_layout_args, train_step  # the worker next to this one

from megatron_sgpo.config import RolloutSection
from megatron_sgpo.model.mapping import WeightMapping
from megatron_sgpo.platform.dist import destroy_parallel
from megatron_sgpo.rollout.engine import SamplingParams
from megatron_sgpo.train.step import collate
from megatron_sgpo.weights.sync import WeightSync

PROMPTS = [[5, 9, 17, 3], [70, 12, 33, 1, 99], [40, 41, 42]]


def sync_with(policy, mapping, urls, hf, version) -> dict:
    """A tensor sync to a fleet of ``urls``: every rank's error ("" if none), the seconds it took, and the
    versions of the engines the fleet kept in rotation."""
    from megatron_sgpo.rollout.engine import EngineError
    from megatron_sgpo.rollout.fleet import EngineFleet

    fleet = EngineFleet.from_config(RolloutSection(engine="serve", urls=tuple(urls)), hf) if dist.get_rank() == 0 \
        else None
    start, message = time.monotonic(), ""
    sync = WeightSync(policy.modules(), mapping, fleet, "tensor", bucket_bytes=4096)
    try:
        sync.push(version)
    except EngineError as exc:
        message = str(exc)
    sync.close()
    messages = [None] * dist.get_world_size()
    dist.all_gather_object(messages, message)
    live = {}
    if fleet is not None:
        live = {c.url: c.weight_version for c in fleet.live()}
        fleet.close()
    return {"messages": messages, "seconds": time.monotonic() - start, "live": live}


def main():
    a = parse_layout_args([("--urls", {"nargs": "+", "required": True}),
                           ("--transports", {"nargs": "+", "default": ["tensor", "distributed", "disk"]}),
                           ("--dead-url", {"default": ""})])
    policy, ckpt, dp = load_policy(a.hf, a.tp, a.pp)
    from megatron.core import parallel_state as ps

    from megatron_sgpo.rollout.fleet import EngineFleet

    mapping = WeightMapping(ckpt.config, a.tp)
    rank = dist.get_rank()
    fleet = EngineFleet.from_config(RolloutSection(engine="serve", urls=tuple(a.urls)), a.hf) if rank == 0 else None
    engines, trainer = {}, {}
    for version, transport in enumerate(a.transports, start=1):
        train_step(policy, dp, a.tp, a.pp, seed=version)
        sync = WeightSync(policy.modules(), mapping, fleet, transport, bucket_bytes=4096,
                          disk_dir=os.path.join(a.out, "disk"), side_dir=a.hf)
        stats = sync.push(version)
        sync.close()
        counts = [None] * dist.get_world_size()
        dist.all_gather_object(counts, {"stage": ps.get_pipeline_model_parallel_rank(), "sender": sync.sender,
                                        **stats})
        box = [None]
        if rank == 0:
            per_engine = []
            for client in fleet.clients:
                done = client.generate(PROMPTS, [1] * len(PROMPTS), SamplingParams(temperature=0, max_new_tokens=6))
                per_engine.append({"url": client.url, "version": client.weight_version,
                                   "sequences": [PROMPTS[i] + g[0].token_ids for i, g in enumerate(done)],
                                   "logprobs": [g[0].logprobs for g in done]})
            engines[transport] = {"engines": per_engine, "counts": counts}
            box = [[e["sequences"] for e in per_engine]]
        dist.broadcast_object_list(box, src=0)
        scored = []
        for seqs in box[0]:
            out = policy.logprobs([collate(seqs, [len(q) for q in PROMPTS])])
            scored.append(out[0]["logprobs"] if out else None)
        trainer[transport] = scored
    if a.dead_url:  # a server that does not answer: left out next to live ones; alone, the sync fails everywhere
        engines["beside_dead"] = sync_with(policy, mapping, a.urls + [a.dead_url], a.hf, version + 1)
        engines["failure"] = sync_with(policy, mapping, [a.dead_url], a.hf, version + 2)
    if rank == 0:
        torch.save(engines, os.path.join(a.out, "engines.pt"))
        fleet.close()
    if ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0:
        torch.save(trainer, os.path.join(a.out, "trainer.pt"))
    dist.barrier()


if __name__ == "__main__":
    main()
    destroy_parallel()  # before interpreter exit: gloo's threads may otherwise abort the process
