"""Per-token log-probs and entropy from vocabulary-parallel logits, without gathering the vocabulary.

Each tensor-parallel rank holds a ``[..., V/TP]`` slice of the logits. Log-probs of the target tokens
use megatron's ``vocab_parallel_cross_entropy`` (its backward is correct across shards). Entropy is
computed here with three all-reduces (max, sum of exp, sum of p·z) and an exact backward,
dH/dz_j = -p_j (z_j - E_p[z]), which each rank applies to its own slice.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


_MASKED = -1e30


def _tp_group():
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_group()


class _VocabParallelEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, group) -> torch.Tensor:
        logits = logits.float()
        z_max = logits.max(dim=-1, keepdim=True)[0]
        dist.all_reduce(z_max, op=dist.ReduceOp.MAX, group=group)
        exp = torch.exp(logits - z_max)
        sum_exp = exp.sum(dim=-1, keepdim=True)
        dist.all_reduce(sum_exp, group=group)
        p = exp / sum_exp
        mean_z = (p * logits).sum(dim=-1, keepdim=True)
        dist.all_reduce(mean_z, group=group)
        entropy = torch.log(sum_exp) + z_max - mean_z
        ctx.save_for_backward(p, logits, mean_z)
        return entropy.squeeze(-1)

    @staticmethod
    def backward(ctx, grad_entropy: torch.Tensor):
        p, logits, mean_z = ctx.saved_tensors
        grad = -p * (logits - mean_z) * grad_entropy.unsqueeze(-1)
        return grad, None


def vocab_parallel_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the full vocabulary; ``logits`` is this rank's vocab slice."""
    return _VocabParallelEntropy.apply(logits, _tp_group())


def vocab_parallel_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    vocab_size: int | None = None,
):
    """Log-probabilities of ``targets`` under softmax(logits / temperature), and optionally the entropy.

    ``logits``: ``[..., V/TP]`` (this rank's slice); ``targets``: ``[...]`` global token ids.
    ``vocab_size``: the real vocabulary; columns past it (megatron's padding) are masked out so the
    distribution matches the unpadded model exactly.
    Returns ``logprobs`` (and ``entropy``) with the shape of ``targets``, in fp32.
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    if vocab_size is not None:
        shard = z.shape[-1]
        start = parallel_state.get_tensor_model_parallel_rank() * shard
        pad = torch.arange(start, start + shard, device=z.device) >= vocab_size
        if bool(pad.any()):
            z = z.masked_fill(pad, _MASKED)  # finite: 0 * -inf would be NaN in the entropy
    entropy = vocab_parallel_entropy(z) if with_entropy else None
    # megatron's cross entropy subtracts the max from its input in place: give it its own tensor
    logprobs = -vocab_parallel_cross_entropy(z.clone() if with_entropy else z, targets)
    return (logprobs, entropy) if with_entropy else logprobs
