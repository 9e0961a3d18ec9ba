"""The sGPO profiling pass: k samples per prompt under the initial policy, resumable and booked in the ledger.

Profiling is resumable: results are appended chunk by chunk to ``profile.partial.jsonl`` (one line
per prompt, flushed and fsynced), and the final ``profile.json`` is written atomically. A run killed
mid-profile redoes only the chunk it was in.
"""
from __future__ import annotations

import json
import os

import numpy as np
from tqdm import tqdm

from megatron_sgpo.algo.profile import PromptProfile, profile_prompts
from megatron_sgpo.config import RunConfig
from megatron_sgpo.loop.checkpoint import write_json_atomic


def _load_partial(path: str) -> dict:
    done = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # a torn last line from a kill: redo that prompt
                        continue
                    done[row["id"]] = row
    return done


def run_profiling(parts, cfg: RunConfig, out_dir: str) -> tuple[list[PromptProfile], tuple[int, float]]:
    """Profiles of every prompt and the (tokens, FLOPs) this pass cost (rank 0)."""
    final = cfg.profile.path or os.path.join(out_dir, "profile.json")
    if os.path.exists(final):
        with open(final) as f:
            saved = json.load(f)
        profiles = [PromptProfile(**p) for p in saved["profiles"]]
        known = {p.prompt_id for p in profiles}
        missing = [it.id for it in parts.items if it.id not in known]
        if missing:
            raise ValueError(f"saved profile {final} lacks {len(missing)} prompts of this dataset, e.g. {missing[:3]}")
        return profiles, tuple(saved["cost"])
    partial = os.path.join(out_dir, "profile.partial.jsonl")
    done = _load_partial(partial)
    todo = [it for it in parts.items if it.id not in done]
    k, chunk = cfg.profile.k, cfg.profile.chunk_prompts
    with open(partial, "a") as f, tqdm(total=len(parts.items), initial=len(done), desc="profile") as bar:
        for start in range(0, len(todo), chunk):
            items = todo[start : start + chunk]
            groups = parts.runner.run(items, [k] * len(items), cfg.rollout.sampling(seed=cfg.run.seed * 7919 + start))
            for g in groups:
                tokens, flops = parts.runner.cost([g])
                row = {"id": g.item.id, "rewards": g.rewards, "lens": g.response_lens(),
                       "prompt_len": len(g.prompt_ids), "tokens": tokens, "flops": flops}
                f.write(json.dumps(row) + "\n")
                done[g.item.id] = row
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(items))
    order = [it.id for it in parts.items]
    profiles, _ = profile_prompts({i: done[i]["rewards"] for i in order}, {i: done[i]["lens"] for i in order},
                                  {i: done[i]["prompt_len"] for i in order})
    cost = (int(sum(done[i]["tokens"] for i in order)), float(sum(done[i]["flops"] for i in order)))
    write_json_atomic(final, {"profiles": [vars(p) for p in profiles], "cost": list(cost), "k": k})
    p_hat = np.array([p.p_hat for p in profiles])
    tqdm.write(f"profiled {len(profiles)} prompts (k={k}): p=1 {int((p_hat == 1).sum())}, "
               f"p=0 {int((p_hat == 0).sum())}, in between {int(((p_hat > 0) & (p_hat < 1)).sum())}")
    return profiles, cost
