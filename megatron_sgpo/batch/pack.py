"""Micro-batches of one rank's samples under a token budget.

Two ways a micro-batch becomes a tensor, and so two ways to count its tokens:

* "padded": a dense ``[b, S]`` tensor, S the longest padded length in it, so it costs
  ``b · S`` tokens. Samples are sorted by length and cut into consecutive runs, which keeps
  similar lengths together and the padding small; cutting greedily gives the fewest runs.
* "packed" (THD, sequences concatenated without padding between them): it costs the sum of
  the padded lengths. Sorted longest first, each micro-batch takes the longest remaining
  samples that fit and then tops up its spare room with the shortest remaining ones.

Megatron runs the same number of micro-batches on every DP rank (they meet in the gradient
all-reduce, and the pipeline schedule is built from that count), and an empty micro-batch
is not something its schedules can run. So a rank that needs fewer micro-batches than the
step's count splits its largest ones in two (alternate samples, so both halves keep
similar lengths) until it has as many; a split never goes over the budget. A rank with
fewer samples than the count cannot be split that far, which is an error.
"""
from __future__ import annotations

import bisect
import heapq
import itertools

import numpy as np

MODES = ("padded", "packed")


def micro_batch_tokens(padded_lengths: np.ndarray, mode: str) -> int:
    """Tokens a micro-batch with these padded lengths occupies in ``mode``."""
    if mode == "padded":
        return int(len(padded_lengths) * padded_lengths.max())
    return int(padded_lengths.sum())


def batches_cost(batches: list, padded: np.ndarray, cost, mode: str) -> float:
    """Estimated FLOPs of running these micro-batches: padded ones pay for every row at the
    micro-batch's longest length, packed ones for each padded sequence."""
    if not batches:
        return 0.0
    if mode == "padded":
        longest = np.array([padded[b].max() for b in batches])
        sizes = np.array([len(b) for b in batches])
        return float((sizes * cost(longest)).sum())
    return float(cost(padded[np.concatenate(batches)]).sum())


def pack_rank(indices: np.ndarray, padded: np.ndarray, budget: int, mode: str) -> list:
    """Fewest-ish micro-batches (arrays of sample indices) of ``indices``, each within ``budget``.

    ``padded`` holds the padded length of every sample of the step; each must be <= budget.
    """
    order = indices[np.argsort(-padded[indices], kind="stable")]
    pl = padded[order]
    n = len(order)
    batches = []
    if mode == "padded":
        start = 0
        while start < n:
            stop = min(n, start + budget // int(pl[start]))
            batches.append(order[start:stop])
            start = stop
        return batches
    csum = np.cumsum(pl).tolist()  # bisect on a list: this loop runs once per micro-batch
    lo, hi = 0, n  # the remaining samples are order[lo:hi]
    while lo < hi:
        base = csum[lo - 1] if lo else 0
        head = min(bisect.bisect_right(csum, base + budget), hi)
        room = budget - (csum[head - 1] - base)
        take = 0
        if head < hi and room > 0:
            # the t shortest remaining samples sum to csum[hi-1] - csum[hi-1-t]
            j = max(bisect.bisect_left(csum, csum[hi - 1] - room), head - 1)
            take = hi - 1 - j
        batches.append(order[lo:head] if take == 0 else np.concatenate((order[lo:head], order[hi - take : hi])))
        lo, hi = head, hi - take
    return batches


def split_to_count(batches: list, count: int, padded: np.ndarray, mode: str, rank: int = 0) -> list:
    """Split the largest micro-batches in two until there are ``count`` of them."""
    if len(batches) > count:
        raise ValueError(f"rank {rank} already has {len(batches)} micro-batches, more than {count}")
    n_samples = sum(len(b) for b in batches)
    if n_samples < count:
        raise ValueError(
            f"rank {rank} holds {n_samples} samples but every rank must run {count} micro-batches "
            "and a micro-batch cannot be empty; use a larger token budget, fewer DP ranks, or more "
            "samples per step"
        )
    if len(batches) == count:
        return list(batches)
    tie = itertools.count()
    heap = [(-micro_batch_tokens(padded[b], mode), next(tie), b) for b in batches]
    heapq.heapify(heap)
    singles = []
    while len(heap) + len(singles) < count:
        entry = heapq.heappop(heap)
        b = entry[2]
        if len(b) == 1:  # the largest splittable one is further down
            singles.append(entry)
            continue
        for half in (b[0::2], b[1::2]):
            heapq.heappush(heap, (-micro_batch_tokens(padded[half], mode), next(tie), half))
    return [b for _, _, b in sorted(heap + singles, key=lambda e: (e[0], e[1]))]
