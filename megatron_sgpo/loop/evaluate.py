"""Greedy evaluation on the held-out set, the accuracy the run's curves and reports are made of."""
from __future__ import annotations

import numpy as np

from megatron_sgpo.config import RunConfig


def evaluate(parts, cfg: RunConfig) -> dict:
    """Greedy accuracy on the evaluation set, overall and per difficulty level, and what it cost (rank 0)."""
    items = parts.eval_items
    groups = parts.runner.run(items, [1] * len(items), cfg.rollout.sampling(seed=0, temperature=0.0))
    correct = np.array([g.rewards[0] >= 1.0 for g in groups], dtype=float)
    tokens, flops = parts.runner.cost(groups)
    result = {"accuracy": float(correct.mean()), "eval_tokens": tokens, "eval_flops": flops}  # not in the ledger
    levels = [g.item.meta.get("level") for g in groups]
    for level in sorted(set(levels) - {None}):
        result[f"accuracy_level{level}"] = float(np.mean([c for c, lv in zip(correct, levels) if lv == level]))
    return result
