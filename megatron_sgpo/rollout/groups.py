"""Rollout of groups: prompts with a per-prompt n → completions → verified rewards.

Shared by the profiling pass, training steps and evaluation, so all three render prompts the same
way (the tokenizer's chat template when the run uses it) and book inference FLOPs the same way;
runs on global rank 0, where the rollout engine (in-process or an HTTP client) lives.
"""
from __future__ import annotations

from dataclasses import dataclass

from megatron_sgpo.model.flops import ModelShape, inference_flops
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
    """Tokenise, generate with a per-prompt n, score with a guarded verifier, count inference FLOPs.

    With ``chat_template`` the prompt becomes the user turn of a conversation (after the system
    prompt, if any), rendered by the tokenizer's own template with the assistant turn opened; the
    rendered text already holds the special tokens the template wants, so none are added again.
    """

    def __init__(self, engine, tokenizer, verifier, shape: ModelShape, chat_template: bool = False,
                 system_prompt: str = ""):
        if system_prompt and not chat_template:
            raise ValueError("a system prompt needs the chat template")
        self.engine, self.tokenizer, self.verifier, self.shape = engine, tokenizer, verifier, shape
        self.chat_template, self.system_prompt = chat_template, system_prompt

    def render(self, prompt: str) -> str:
        """The text the policy is conditioned on."""
        if not self.chat_template:
            return prompt
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, prompt: str) -> list[int]:
        ids = self.tokenizer(self.render(prompt), add_special_tokens=not self.chat_template)["input_ids"]
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
            groups.append(self.score(item, ids, comps))
        return groups

    def score(self, item: TaskItem, prompt_ids: list[int], completions: list[Completion]) -> Group:
        """One prompt's completions, decoded and verified."""
        texts = [c.text or self.tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions]
        return Group(item, prompt_ids, completions, texts, self.verifier.score_batch([item] * len(texts), texts))

    def cost(self, groups: list[Group]) -> tuple[int, float]:
        """(tokens, FLOPs) of generating these groups: prompt once per sample, plus every response token."""
        return self.request_cost([(len(g.prompt_ids), n) for g in groups for n in g.response_lens()])

    def request_cost(self, requests: list[tuple[int, int]]) -> tuple[int, float]:
        """(tokens, FLOPs) of generation requests given as (context tokens, tokens made)."""
        tokens = sum(context + made for context, made in requests)
        return tokens, float(sum(inference_flops(self.shape, context, made) for context, made in requests))
