"""Multiway number partitioning: split item costs over k ranks so the largest sum is small.

The step time of data-parallel training is the time of the slowest rank, so the quantity
to minimise is ``max(rank cost) / mean(rank cost)``. Two constructions, then one repair:

* Karmarkar–Karp largest differencing (few items per rank, e.g. whole groups): repeatedly
  merge the two partial partitions with the largest spread, pairing the heaviest subset of
  one with the lightest of the other. Better than greedy when items are few and uneven, but
  each merge costs O(k log k), so it is tried only up to ``KK_MAX_ITEMS`` items, next to
  LPT, and the better of the two is kept.
* LPT greedy (always tried): heaviest item first, always onto the least loaded rank. With
  tens of items per rank this is already within a few percent.
* Refinement: while it helps (and max/mean is above 1 + 1e-5), take the most loaded rank
  and a light rank and move one item, or swap two, choosing the exchange that brings the
  pair closest to equal. Each accepted exchange lowers the heavier load without raising
  the other above it, so it terminates.

Sample counts per rank are free to differ: equal counts (verl's constraint) cost balance
when lengths are long-tailed, and the micro-batch count is equalised later by splitting.
"""
from __future__ import annotations

import heapq
import itertools

import numpy as np

KK_MAX_ITEMS = 1024
_EXACT_LPT_ROUNDS = 4
_GOOD_ENOUGH = 1e-5  # max/mean - 1 below which refining is not worth its time
_REFINE_PARTNERS = 8


def _karmarkar_karp(costs: np.ndarray, k: int) -> np.ndarray:
    """Largest-differencing method for k subsets; returns the subset of each item."""
    tie = itertools.count()
    heap = []
    for i in np.argsort(-costs, kind="stable").tolist():
        sums = np.zeros(k)
        sums[0] = costs[i]
        subsets = [[i]] + [[] for _ in range(k - 1)]
        heap.append((-float(costs[i]), next(tie), sums, subsets))
    heapq.heapify(heap)
    while len(heap) > 1:
        _, _, sa, ua = heapq.heappop(heap)
        _, _, sb, ub = heapq.heappop(heap)
        sums = sa + sb[::-1]  # both sorted descending: heaviest meets lightest
        subsets = [ua[j] + ub[k - 1 - j] for j in range(k)]
        order = np.argsort(-sums, kind="stable")
        sums = sums[order]
        subsets = [subsets[j] for j in order]
        heapq.heappush(heap, (-(float(sums[0] - sums[-1])), next(tie), sums, subsets))
    assign = np.empty(len(costs), dtype=np.int64)
    for rank, members in enumerate(heap[0][3]):
        assign[members] = rank
    return assign


def _lpt(costs: np.ndarray, k: int) -> np.ndarray:
    """Longest-processing-time greedy; returns the rank of each item.

    The first ``_EXACT_LPT_ROUNDS·k`` (largest) items go one at a time through a heap. After
    that items are small next to the loads, so they are placed k at a time: the k largest
    remaining to the ranks in order of load, lightest first. That keeps 100k items fast
    (one argsort of k per k items instead of a Python heap step per item).
    """
    order = np.argsort(-costs, kind="stable")
    head = min(len(order), _EXACT_LPT_ROUNDS * k)
    heap = [(0.0, r) for r in range(k)]
    ranks = []
    for c in costs[order[:head]].tolist():
        load, r = heap[0]
        heapq.heapreplace(heap, (load + c, r))
        ranks.append(r)
    assign = np.empty(len(costs), dtype=np.int64)
    assign[order[:head]] = ranks
    loads = np.zeros(k)
    for load, r in heap:
        loads[r] = load
    for start in range(head, len(order), k):
        chunk = order[start : start + k]
        lightest = np.argsort(loads, kind="stable")[: len(chunk)]
        assign[chunk] = lightest
        loads[lightest] += costs[chunk]
    return assign


def exchange_candidates(heavy: np.ndarray, light: np.ndarray, gap: float, limit: int = 1) -> list:
    """Up to ``limit`` exchanges that narrow ``gap`` between a heavy and a light rank, best first.

    Each is ``(i, j, new_gap)``: item i of ``heavy`` goes to the light rank and item j of
    ``light`` comes back, or nothing comes back when j is -1.
    """
    light_sorted_idx = np.argsort(light, kind="stable")
    cand = np.concatenate(([0.0], light[light_sorted_idx]))  # 0 = move without taking anything back
    cand_idx = np.concatenate(([-1], light_sorted_idx))
    pos = np.searchsorted(cand, heavy - gap / 2.0)
    lower = np.clip(pos - 1, 0, len(cand) - 1)
    upper = np.clip(pos, 0, len(cand) - 1)
    gap_lower = np.abs(gap - 2.0 * (heavy - cand[lower]))
    gap_upper = np.abs(gap - 2.0 * (heavy - cand[upper]))
    partner = np.where(gap_upper < gap_lower, upper, lower)
    new_gap = np.minimum(gap_lower, gap_upper)
    out = []
    for i in np.argsort(new_gap, kind="stable")[:limit].tolist():
        if new_gap[i] >= gap:
            break
        out.append((i, int(cand_idx[partner[i]]), float(new_gap[i])))
    return out


def refine(costs: np.ndarray, assign: np.ndarray, k: int, max_rounds: int | None = None) -> np.ndarray:
    """Improve ``assign`` in place by moves and pairwise swaps off the most loaded rank."""
    loads = np.bincount(assign, weights=costs, minlength=k)
    tol = 1e-9 * float(loads.mean())
    for _ in range(max_rounds if max_rounds is not None else 20 * k):
        if loads.max() <= (1.0 + _GOOD_ENOUGH) * loads.mean():
            break
        heavy_rank = int(np.argmax(loads))
        heavy_idx = np.flatnonzero(assign == heavy_rank)
        done = True
        for light_rank in np.argsort(loads, kind="stable")[:_REFINE_PARTNERS].tolist():
            gap = float(loads[heavy_rank] - loads[light_rank])
            if gap <= tol:
                break
            light_idx = np.flatnonzero(assign == light_rank)
            best = exchange_candidates(costs[heavy_idx], costs[light_idx], gap)
            if not best or gap - best[0][2] <= tol:
                continue
            i, j = heavy_idx[best[0][0]], (light_idx[best[0][1]] if best[0][1] >= 0 else None)
            delta = costs[i] - (costs[j] if j is not None else 0.0)
            assign[i] = light_rank
            if j is not None:
                assign[j] = heavy_rank
            loads[heavy_rank] -= delta
            loads[light_rank] += delta
            done = False
            break
        if done:
            break
    return assign


def partition(costs: np.ndarray, k: int) -> np.ndarray:
    """Rank in ``[0, k)`` for each item, balancing the summed cost; needs ``len(costs) >= k``."""
    costs = np.asarray(costs, dtype=np.float64)
    if len(costs) < k:
        raise ValueError(f"cannot give each of {k} ranks an item: only {len(costs)} items")
    if k == 1:
        return np.zeros(len(costs), dtype=np.int64)
    candidates = [_lpt(costs, k)]
    if len(costs) <= KK_MAX_ITEMS:  # KK usually wins with few items per rank, but not always
        candidates.append(_karmarkar_karp(costs, k))
    best = None
    for assign in candidates:
        _fill_empty(costs, assign, k)
        assign = refine(costs, assign, k)
        peak = np.bincount(assign, weights=costs, minlength=k).max()
        if best is None or peak < best[0]:
            best = (peak, assign)
    return best[1]


def _fill_empty(costs: np.ndarray, assign: np.ndarray, k: int) -> None:
    """Give every empty rank the cheapest item of a rank holding several (an empty rank would
    have no micro-batch to run); the refinement pass then restores balance."""
    counts = np.bincount(assign, minlength=k)
    for rank in np.flatnonzero(counts == 0).tolist():
        donors = np.flatnonzero(counts[assign] > 1)
        i = int(donors[np.argmin(costs[donors])])
        counts[assign[i]] -= 1
        assign[i] = rank
        counts[rank] = 1
