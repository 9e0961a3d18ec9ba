"""Second balancing pass for padded micro-batches, on the cost the ranks will actually run.

In "padded" mode every row of a micro-batch is as long as its longest sample, so a rank's
real cost depends on how its samples happen to fall into micro-batches, which the first
pass (balancing per-sample costs) cannot see. With few samples per rank (DP=64) that
padding differs enough between ranks to cost a few percent of balance. This pass takes the
rank that will run longest, tries the few moves and swaps with a light rank that the
per-sample costs suggest, re-packs both ranks for each, and keeps the one that lowers the
larger of the two the most. Micro-batch counts stay within the step's count, so the
exchange never changes how many micro-batches a rank must run.
"""
from __future__ import annotations

import numpy as np

from .multiway import exchange_candidates
from .pack import batches_cost, pack_rank, split_to_count

_CANDIDATES = 8
_PARTNERS = 3


def refine_padded(
    rank_of_sample: np.ndarray,
    sample_cost: np.ndarray,
    padded: np.ndarray,
    budget: int,
    count: int,
    cost,
    dp: int,
    loads: np.ndarray | None = None,
    target: float = 1.001,
    max_rounds: int | None = None,
) -> np.ndarray:
    """Improved sample→rank assignment; stops at max/mean <= target.

    ``loads`` are the ranks' current padded costs if already known. Returns the input array
    itself when nothing changed, so the caller can skip re-planning.
    """
    members = [np.flatnonzero(rank_of_sample == r) for r in range(dp)]

    def run_cost(idx: np.ndarray) -> float:
        if len(idx) < count:
            return np.inf
        batches = pack_rank(idx, padded, budget, "padded")
        if len(batches) > count:
            return np.inf
        return batches_cost(split_to_count(batches, count, padded, "padded"), padded, cost, "padded")

    loads = np.array([run_cost(m) for m in members]) if loads is None else np.array(loads, dtype=np.float64)
    changed = False
    for _ in range(max_rounds if max_rounds is not None else 4 * dp):
        if loads.max() <= target * loads.mean():
            break
        h = int(np.argmax(loads))
        improved = False
        for l in np.argsort(loads, kind="stable")[:_PARTNERS].tolist():
            gap = float(loads[h] - loads[l])
            best, best_max = None, float(loads[h]) * (1 - 1e-12)
            for i, j, _ in exchange_candidates(sample_cost[members[h]], sample_cost[members[l]], gap, _CANDIDATES):
                give = members[h][i]
                take = members[l][j] if j >= 0 else None
                new_h = np.delete(members[h], i) if take is None else np.append(np.delete(members[h], i), take)
                new_l = np.append(members[l], give) if take is None else np.append(np.delete(members[l], j), give)
                cost_h = run_cost(new_h)
                if cost_h >= best_max:
                    continue
                cost_l = run_cost(new_l)
                if max(cost_h, cost_l) < best_max:
                    best, best_max = (new_h, new_l, cost_h, cost_l), max(cost_h, cost_l)
            if best is not None:
                members[h], members[l], loads[h], loads[l] = best
                improved = changed = True
                break
        if not improved:
            break
    if not changed:
        return rank_of_sample
    out = np.empty_like(rank_of_sample)
    for r, m in enumerate(members):
        out[m] = r
    return out
