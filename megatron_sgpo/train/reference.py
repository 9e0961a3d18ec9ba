"""The frozen reference policy π_ref of the KL term: the policy's model and layout, its initial weights, never updated.

It is built next to the policy before the first update and copies the policy's parameters chunk by chunk, so
it is exactly the checkpoint the run started from on every rank's shard (no second read of the checkpoint),
holds no gradients and no optimizer state, and only ever runs forward (the reference log-prob pass).
"""
from __future__ import annotations

from megatron_sgpo.model.build import build_model
from megatron_sgpo.train.step import MicroBatch, forward_logprobs


class ReferencePolicy:
    def __init__(self, policy):
        self.dp_size, self.vocab_size = policy.dp_size, policy.vocab_size
        self.chunks = build_model(policy.hf_config, policy.layout, policy.options)
        for chunk, source in zip(self.chunks, policy.modules()):
            chunk.load_state_dict(source.state_dict())
            chunk.requires_grad_(False)

    def logprobs(self, micro_batches: list[MicroBatch], temperature: float = 1.0) -> list[dict]:
        """Forward only; on the last pipeline stage, per micro-batch ``{"logprobs": [b, s]}``."""
        return forward_logprobs(self.chunks, micro_batches, self.dp_size, self.vocab_size, temperature)
