"""Checkpoints of the full RL state: model, optimizer, LR schedule, plan position, posteriors, ledger, RNG.

Layout: ``<output_dir>/checkpoints/step_<N>/{rank<R>.pt, state.json}`` and a ``latest`` file naming
the newest complete one. Every rank writes into ``step_<N>.tmp``; after a barrier rank 0 renames it
and then rewrites ``latest`` (both atomic renames), so a run killed at any moment resumes from the
last complete checkpoint. Model and optimizer state are per rank (resume with the same layout).
The loop draws every random number from generators seeded by (run seed, step), so the JSON state
plus torch's RNG state is all that is needed to reproduce the steps after a resume.
"""
from __future__ import annotations

import json
import os
import shutil

import torch
import torch.distributed as dist


def _dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def save(output_dir: str, step: int, policy, state: dict) -> str:
    """Write checkpoint ``step`` (collective: every rank calls it)."""
    root = _dir(output_dir)
    final = os.path.join(root, f"step_{step}")
    tmp = final + ".tmp"
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    torch.save({"model": [c.state_dict() for c in policy.chunks], "optimizer": policy.optimizer.state_dict(),
                "scheduler": policy.scheduler.state_dict(), "torch_rng": torch.get_rng_state()},
               os.path.join(tmp, f"rank{rank}.pt"))
    if rank == 0:
        write_json_atomic(os.path.join(tmp, "state.json"), state)
    dist.barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_json_atomic(os.path.join(root, "latest"), {"step": step, "path": final})
    dist.barrier()
    return final


def latest(output_dir: str) -> str | None:
    path = os.path.join(_dir(output_dir), "latest")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        found = json.load(f)["path"]
    return found if os.path.isdir(found) else None


def load(path: str, policy) -> dict:
    """Restore this rank's model and optimizer from checkpoint folder ``path``; return the RL state."""
    rank = dist.get_rank()
    blob = torch.load(os.path.join(path, f"rank{rank}.pt"), weights_only=False)
    if len(blob["model"]) != len(policy.chunks):
        raise ValueError(f"checkpoint {path} has {len(blob['model'])} model chunks, this run has {len(policy.chunks)}")
    for chunk, sd in zip(policy.chunks, blob["model"]):
        chunk.load_state_dict(sd)
    policy.optimizer.load_state_dict(blob["optimizer"])
    policy.scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    with open(os.path.join(path, "state.json")) as f:
        return json.load(f)
