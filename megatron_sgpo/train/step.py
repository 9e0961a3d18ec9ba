"""Forward/backward over RL micro-batches with megatron's pipeline schedules.

Loss normalisation is independent of the partition: the loss function returns a *sum* over its
micro-batch divided by a normaliser that is global for the step (all ranks, all micro-batches).
megatron divides each micro-batch's loss by the number of micro-batches and DDP averages gradients
over data-parallel ranks; we multiply by both counts to undo that, so the gradient is exactly the
one a single process computes over the whole step (tested: DP=2 vs DP=1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from megatron_sgpo.train.logprob import vocab_parallel_logprobs


@dataclass
class MicroBatch:
    """A dense ``[b, s]`` batch. ``loss_mask[:, t]`` = 1 where ``tokens[:, t+1]`` is a scored (response) token.

    ``fields`` holds per-sample (``[b]``) or per-position (``[b, s]``) tensors the loss needs
    (advantages, old/reference log-probs, importance weights), aligned like ``loss_mask``.
    """

    tokens: torch.Tensor
    loss_mask: torch.Tensor
    fields: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def targets(self) -> torch.Tensor:
        return torch.roll(self.tokens, shifts=-1, dims=1)

    def to(self, device) -> "MicroBatch":
        return MicroBatch(self.tokens.to(device), self.loss_mask.to(device), {k: v.to(device) for k, v in self.fields.items()})


def collate(sequences: list[list[int]], prompt_lens: list[int], pad_id: int = 0, pad_to_multiple: int = 1) -> MicroBatch:
    """Right-pad token sequences (prompt + response) into one micro-batch; score only response tokens."""
    if not sequences:
        raise ValueError("cannot collate an empty micro-batch")
    longest = max(len(s) for s in sequences)
    length = -(-longest // pad_to_multiple) * pad_to_multiple
    tokens = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), length, dtype=torch.float32)
    for i, (seq, p) in enumerate(zip(sequences, prompt_lens)):
        if not 0 < p <= len(seq):
            raise ValueError(f"sequence {i}: prompt length {p} outside 1..{len(seq)}")
        tokens[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[i, p - 1 : len(seq) - 1] = 1.0  # position t predicts token t+1
    return MicroBatch(tokens, mask)


LossFn = Callable[[torch.Tensor, torch.Tensor | None, MicroBatch], tuple[torch.Tensor, dict]]


def forward_backward(
    chunks: list,
    micro_batches: list[MicroBatch],
    loss_fn: LossFn | None,
    dp_size: int,
    vocab_size: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    forward_only: bool = False,
) -> list[dict]:
    """Run the schedule; return, on the last pipeline stage, one metrics dict per micro-batch.

    With ``loss_fn=None`` (forward only) each dict holds ``logprobs`` ``[b, s]`` (and ``entropy``).
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if not micro_batches:
        raise ValueError("forward_backward needs at least one micro-batch")
    device = next(chunks[0].parameters()).device
    scale = float(len(micro_batches) * dp_size)

    def forward_step(data_iterator, model):
        mb = next(data_iterator).to(device)
        b, s = mb.tokens.shape
        positions = torch.arange(s, device=device).unsqueeze(0).expand(b, s)
        output = model(mb.tokens, positions, None)

        def finish(logits):
            out = vocab_parallel_logprobs(logits, mb.targets, temperature, with_entropy, vocab_size)
            logprobs, entropy = out if with_entropy else (out, None)
            if loss_fn is None:
                metrics = {"logprobs": logprobs.detach()}
                if entropy is not None:
                    metrics["entropy"] = entropy.detach()
                return logits.new_zeros(()), metrics
            loss, metrics = loss_fn(logprobs, entropy, mb)
            metrics = {**metrics, "loss": loss.detach()}  # checked for NaN/inf before the optimizer step
            return loss * scale, metrics

        return output, finish

    if len(chunks) > 1:  # interleaved schedule: one iterator per chunk, each over all micro-batches
        data, model = [iter(micro_batches) for _ in chunks], chunks
    else:
        data, model = iter(micro_batches), chunks[0]
    seq_length = max(mb.tokens.shape[1] for mb in micro_batches)
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=data,
        model=model,
        num_microbatches=len(micro_batches),
        seq_length=seq_length,
        micro_batch_size=micro_batches[0].tokens.shape[0],
        forward_only=forward_only or loss_fn is None,
    )


def forward_logprobs(chunks: list, micro_batches: list[MicroBatch], dp_size: int, vocab_size: int,
                     temperature: float = 1.0, with_entropy: bool = False) -> list[dict]:
    """Forward only, in eval mode: on the last pipeline stage, per micro-batch ``{"logprobs": [b, s]}``."""
    for chunk in chunks:
        chunk.eval()
    with torch.no_grad():
        return forward_backward(chunks, micro_batches, None, dp_size, vocab_size, temperature, with_entropy,
                                forward_only=True)
