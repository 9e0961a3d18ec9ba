"""Rollout of groups: prompts with a per-prompt n → completions → verified rewards.

Shared by the profiling pass, training steps and evaluation; runs on global rank 0, where the
rollout engine (in-process or an HTTP client) lives.
"""
from __future__ import annotations

from dataclasses import dataclass

from megatron_sgpo.algo.ledger import ModelDims, inference_flops
from megatron_sgpo.rollout.engine import Completion, SamplingParams
from megatron_sgpo.tasks.dataset import TaskItem


@dataclass
class Group:
    item: TaskItem
    prompt_ids: list[int]
    completions: list[Completion]
    texts: list[str]  # decoded responses, as the verifier saw them
    rewards: list[float]

    def response_lens(self) -> list[int]:
        return [len(c.token_ids) for c in self.completions]


class GroupRunner:
    """Tokenise, generate with a per-prompt n, score with a guarded verifier, count inference FLOPs."""

    def __init__(self, engine, tokenizer, verifier, dims: ModelDims):
        self.engine, self.tokenizer, self.verifier, self.dims = engine, tokenizer, verifier, dims

    def encode(self, prompt: str) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if not ids:
            raise ValueError(f"prompt {prompt!r} tokenises to nothing")
        return list(ids)

    def run(self, items: list[TaskItem], ns: list[int], params: SamplingParams) -> list[Group]:
        prompts = [self.encode(it.prompt) for it in items]
        results = self.engine.generate(prompts, list(ns), params)
        groups = []
        for item, ids, comps, n in zip(items, prompts, results, ns):
            if len(comps) != n:
                raise RuntimeError(f"engine returned {len(comps)} completions for prompt {item.id!r}, asked {n}")
            texts = [c.text or self.tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in comps]
            rewards = self.verifier.score_batch([item] * n, texts)
            groups.append(Group(item, ids, comps, texts, rewards))
        return groups

    def cost(self, groups: list[Group]) -> tuple[int, float]:
        """(tokens, FLOPs) of generating these groups: prompt once per sample, plus every response token."""
        tokens, flops = 0, 0.0
        for g in groups:
            for n in g.response_lens():
                tokens += len(g.prompt_ids) + n
                flops += inference_flops(self.dims, len(g.prompt_ids), n)
        return tokens, flops
