"""Data-parallel-aware batching of one RL step with variable group sizes.

``make_batches`` decides where each sample of the step is trained: which DP rank, and in
which of that rank's micro-batches. It never adds, drops or repeats a sample, so the set of
samples in the step, and with the global loss normalisers computed before batching (the
algorithm package's job) the gradient, is exactly what one process would compute. Only the
speed depends on the plan.

The steps:
1. pad every length for the parallel layout (``padding.pad_length``) and reject samples that
   do not fit the token budget on their own: a ValueError names the first such sample, its
   padded length and the budget. Truncating it would change the gradient and dropping it
   would change the step, so the caller must raise the budget (or cap generation length);
2. estimate each sample's training FLOPs on its padded length (``cost.CostModel``);
3. split the samples, or whole groups with ``keep_groups_together``, over the DP ranks so
   their summed cost is balanced (``multiway.partition``);
4. on each rank, form micro-batches under the budget (``pack.pack_rank``); the step's
   micro-batch count is the most any rank needs, rounded up to a multiple of pp when the
   interleaved schedule (vpp) is used, which Megatron requires; ranks needing fewer split
   their largest micro-batches (``pack.split_to_count``). A rank holding fewer samples than
   that count first receives the cheapest samples of ranks with spare ones; if the whole
   step has fewer than dp × count samples (or groups must stay together) it is a ValueError
   naming the rank, because Megatron cannot run an empty micro-batch;
5. in "padded" mode, rebalance on the cost including each micro-batch's padding
   (``repair.refine_padded``); skipped with ``keep_groups_together``, whose unit is a group.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_sgpo.platform.layout import ParallelLayout

from .cost import CostModel
from .multiway import partition
from .pack import MODES, batches_cost, micro_batch_tokens, pack_rank, split_to_count
from .padding import pad_length
from .repair import refine_padded


@dataclass
class BatchPlan:
    """For each DP rank, its micro-batches as arrays of sample indices into the step."""

    per_rank: list
    padded_lengths: np.ndarray
    mode: str
    cost: CostModel

    @property
    def num_micro_batches(self) -> int:
        """Micro-batches per rank (the same on every rank)."""
        return len(self.per_rank[0])

    def rank_of(self) -> np.ndarray:
        """DP rank of every sample."""
        out = np.full(len(self.padded_lengths), -1, dtype=np.int64)
        for rank, batches in enumerate(self.per_rank):
            for b in batches:
                out[b] = rank
        return out

    def tokens(self, rank: int, micro_batch: int) -> int:
        """Tokens (padding included) of one micro-batch, as counted against the budget."""
        return micro_batch_tokens(self.padded_lengths[self.per_rank[rank][micro_batch]], self.mode)

    def rank_costs(self) -> np.ndarray:
        """Estimated FLOPs of each rank as it will run: padded micro-batches pay for every
        row at the micro-batch's longest length, packed ones for each padded sequence."""
        return np.array([batches_cost(b, self.padded_lengths, self.cost, self.mode) for b in self.per_rank])

    def imbalance(self) -> float:
        """max / mean rank cost: 1.0 is perfect; the step runs at the pace of the max."""
        costs = self.rank_costs()
        return float(costs.max() / costs.mean())


def _check_inputs(lengths, group_ids, layout, budget, mode):
    lengths = np.asarray(lengths)
    group_ids = np.asarray(group_ids)
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must be a 1-D integer array, got shape {lengths.shape} dtype {lengths.dtype}")
    if len(lengths) == 0:
        raise ValueError("the step has no samples")
    if lengths.min() < 1:
        i = int(np.argmin(lengths))
        raise ValueError(f"sample {i} has length {int(lengths[i])}; lengths must be >= 1")
    if group_ids.shape != lengths.shape:
        raise ValueError(f"group_ids shape {group_ids.shape} differs from lengths shape {lengths.shape}")
    if not isinstance(layout, ParallelLayout):
        raise TypeError(f"layout must be a ParallelLayout, got {type(layout).__name__}")
    layout.resolved_dp()  # the batcher splits over a known number of ranks
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"max_tokens_per_micro_batch must be a positive integer, got {budget!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return lengths.astype(np.int64), group_ids


def _pack_ranks(rank_of_sample, padded, layout, budget, mode, min_count):
    """Each rank's micro-batches before splitting, and the count every rank must reach."""
    members = np.argsort(rank_of_sample, kind="stable")
    bounds = np.searchsorted(rank_of_sample[members], np.arange(layout.dp + 1))
    packed = [pack_rank(members[bounds[r] : bounds[r + 1]], padded, budget, mode) for r in range(layout.dp)]
    count = max(min_count, max(len(p) for p in packed))
    if layout.vpp is not None:
        count = -(-count // layout.pp) * layout.pp
    return packed, count


def plan_from_assignment(
    rank_of_sample: np.ndarray,
    padded: np.ndarray,
    layout: ParallelLayout,
    budget: int,
    cost: CostModel,
    mode: str,
    min_count: int = 1,
) -> BatchPlan:
    """Micro-batches for a given sample→rank assignment (also used to score baselines);
    at least ``min_count`` per rank."""
    packed, count = _pack_ranks(rank_of_sample, padded, layout, budget, mode, min_count)
    per_rank = [split_to_count(p, count, padded, mode, rank=r) for r, p in enumerate(packed)]
    return BatchPlan(per_rank=per_rank, padded_lengths=padded, mode=mode, cost=cost)


def _top_up_short_ranks(rank_of_sample, sample_cost, padded, layout, budget, mode):
    """Give ranks holding fewer samples than the micro-batch count the cheapest samples of
    ranks with some to spare. Cost balance puts one very long sample on a rank on its own
    while another rank needs several micro-batches for many short ones; moving a few short
    samples costs little balance and avoids refusing the step."""
    cheapest_first = np.argsort(sample_cost, kind="stable").tolist()
    for _ in range(4):  # a receiving rank may in turn need one more micro-batch
        _, count = _pack_ranks(rank_of_sample, padded, layout, budget, mode, 1)
        counts = np.bincount(rank_of_sample, minlength=layout.dp)
        if counts.min() >= count or counts.sum() < count * layout.dp:
            return rank_of_sample  # nothing to do, or impossible: split_to_count says why
        rank_of_sample = rank_of_sample.copy()
        for receiver in np.flatnonzero(counts < count).tolist():
            for i in cheapest_first:
                if counts[receiver] >= count:
                    break
                donor = rank_of_sample[i]
                if counts[donor] > count:
                    rank_of_sample[i] = receiver
                    counts[donor] -= 1
                    counts[receiver] += 1
    return rank_of_sample


def make_batches(
    lengths: np.ndarray,
    group_ids: np.ndarray,
    layout: ParallelLayout,
    max_tokens_per_micro_batch: int,
    cost: CostModel,
    mode: str = "padded",
    keep_groups_together: bool = False,
) -> BatchPlan:
    """Plan one step: ``lengths[i]`` is sample i's prompt+response tokens, ``group_ids[i]`` its group."""
    lengths, group_ids = _check_inputs(lengths, group_ids, layout, max_tokens_per_micro_batch, mode)
    budget = int(max_tokens_per_micro_batch)
    padded = pad_length(lengths, layout)
    over = np.flatnonzero(padded > budget)
    if len(over):
        i = int(over[0])
        raise ValueError(
            f"sample {i} has padded length {int(padded[i])} (length {int(lengths[i])}), more than "
            f"max_tokens_per_micro_batch={budget}; {len(over)} sample(s) do not fit alone. Raise the "
            "budget or cap the generation length: the batcher never truncates or drops samples"
        )
    sample_cost = cost(padded)
    if keep_groups_together:
        _, group_of = np.unique(group_ids, return_inverse=True)
        group_cost = np.bincount(group_of, weights=sample_cost)
        if len(group_cost) < layout.dp:
            raise ValueError(
                f"keep_groups_together needs at least dp={layout.dp} groups, the step has {len(group_cost)}"
            )
        rank_of_sample = partition(group_cost, layout.dp)[group_of]
    else:
        if len(lengths) < layout.dp:
            raise ValueError(f"the step has {len(lengths)} samples, fewer than dp={layout.dp} ranks")
        rank_of_sample = partition(sample_cost, layout.dp)
        rank_of_sample = _top_up_short_ranks(rank_of_sample, sample_cost, padded, layout, budget, mode)
    plan = plan_from_assignment(rank_of_sample, padded, layout, budget, cost, mode)
    if mode == "padded" and layout.dp > 1 and not keep_groups_together:
        count = plan.num_micro_batches
        better = refine_padded(
            rank_of_sample, sample_cost, padded, budget, count, cost, layout.dp, loads=plan.rank_costs()
        )
        if better is not rank_of_sample:
            plan = plan_from_assignment(better, padded, layout, budget, cost, mode, min_count=count)
    return plan
