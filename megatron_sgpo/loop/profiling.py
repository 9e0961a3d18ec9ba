"""The sGPO profiling pass: k samples per prompt under the initial policy, resumable and booked in the ledger.

Profiling is resumable and deterministic: the prompts are cut into chunks of ``profile.chunk_prompts`` by dataset
position, each chunk sampled with a seed of its own (run seed, position); results are appended chunk by chunk to
``profile.partial.jsonl`` (one line per prompt with its chunk seed, flushed and fsynced), and the final
``profile.json`` is written atomically. A run killed mid-profile redoes only the chunk it was in, whole, with the
same seed: the profile equals an uninterrupted one's. Rows sampled with another seed, k or sequential rule are
redone. With ``profile.sequential`` a chunk is sampled in rounds (round r with seed + 1_000_003 r), each round
only for the prompts whose posterior has not decided yet (algo/sequential_profile.py).
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


def _sample_chunk(parts, cfg: RunConfig, items, seed: int) -> list[dict]:
    """One row per prompt: k samples at once, or (profile.sequential) rounds until the posterior decides."""
    k, runner = cfg.profile.k, parts.runner
    rows = {it.id: {"id": it.id, "rewards": [], "lens": [], "tokens": 0, "flops": 0.0, "seed": seed, "k": k}
            for it in items}
    rule = cfg.profile.rule() if cfg.profile.sequential else None
    active, rnd = list(items), 0
    while active:
        n = k if rule is None else min(rule.round_size, k - len(rows[active[0].id]["rewards"]))
        for g in runner.run(active, [n] * len(active), cfg.rollout.sampling(seed=seed + 1_000_003 * rnd)):
            row = rows[g.item.id]
            tokens, flops = runner.cost([g])
            row.update(rewards=row["rewards"] + g.rewards, lens=row["lens"] + g.response_lens(),
                       prompt_len=len(g.prompt_ids), tokens=row["tokens"] + tokens, flops=row["flops"] + flops)
        rnd += 1
        active = [] if rule is None else [it for it in active if len(rows[it.id]["rewards"]) < k and rule.decide(
            sum(r >= 1.0 for r in rows[it.id]["rewards"]), sum(r < 1.0 for r in rows[it.id]["rewards"])) is None]
    return list(rows.values())


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
    k, size = cfg.profile.k, cfg.profile.chunk_prompts
    chunks = [(start, parts.items[start : start + size]) for start in range(0, len(parts.items), size)]
    seed = {start: cfg.run.seed * 7919 + start for start, _ in chunks}
    done = _load_partial(partial)
    # as the rows store it (JSON turns the prior's tuple into a list), so saved rows compare equal
    rule = json.loads(json.dumps(vars(cfg.profile.rule()))) if cfg.profile.sequential else None
    finished = {start for start, items in chunks
                if all(done.get(it.id, {}).get("seed") == seed[start] and done[it.id].get("k") == k
                       and done[it.id].get("rule") == rule for it in items)}
    with open(partial, "a") as f, tqdm(total=len(parts.items), desc="profile",
                                       initial=sum(len(items) for start, items in chunks if start in finished)) as bar:
        for start, items in chunks:
            if start in finished:
                continue
            for row in _sample_chunk(parts, cfg, items, seed[start]):
                f.write(json.dumps({**row, "rule": rule}) + "\n")
                done[row["id"]] = row
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
