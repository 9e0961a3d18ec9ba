"""DP-aware batching of variable-size groups: which rank and micro-batch each sample goes to."""
from .balance import BatchPlan, make_batches, plan_from_assignment
from .cost import CostModel
from .multiway import partition
from .padding import length_multiple, pad_length

__all__ = ["BatchPlan", "CostModel", "length_multiple", "make_batches", "pad_length", "partition",
           "plan_from_assignment"]
