"""The rollout-engine contract every backend (local, SGLang, vLLM) implements.

The trainer only ever talks to a `RolloutEngine`: it asks for a *different* number of
samples per prompt (sGPO's variable group sizes), and after each optimiser step pushes
HF-named full tensors, bucket by bucket, with a monotonically advancing integer version.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import torch

from megatron_sgpo.plugins import Registry

FINISH_REASONS = ("stop", "length", "abort")


class EngineError(RuntimeError):
    """Any failure of a rollout engine that the caller should see with its context."""


@dataclass(frozen=True)
class SamplingParams:
    """Sampling knobs shared by all engines. temperature 0 means greedy; top_k -1 means off."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: Optional[int] = None

    def __post_init__(self):
        # Lists are accepted for convenience but stored as tuples so params stay hashable.
        object.__setattr__(self, "stop", tuple([self.stop] if isinstance(self.stop, str) else self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (off) or >= 1, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Completion:
    """One sampled continuation of prompt `prompt_index`.

    `logprobs[i]` is the log-probability of `token_ids[i]` under the distribution it was
    sampled from *before* top-k/top-p truncation: log_softmax(logits / T) for T > 0 and
    log_softmax(logits) for greedy — SGLang's default convention (see docs/rollout.md).
    """

    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str = ""
    weight_version: Optional[int] = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}")
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"{len(self.token_ids)} tokens but {len(self.logprobs)} log-probs")


def check_generate_args(prompts: Sequence[Sequence[int]], n_per_prompt: Sequence[int]) -> None:
    """Shared argument check so every engine rejects the same mistakes the same way."""
    if len(prompts) != len(n_per_prompt):
        raise ValueError(f"{len(prompts)} prompts but {len(n_per_prompt)} entries in n_per_prompt")
    for i, (p, n) in enumerate(zip(prompts, n_per_prompt)):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        if int(n) < 0:
            raise ValueError(f"n_per_prompt[{i}] = {n} is negative")


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """Per-sample seed, so a sample's random stream depends only on (seed, prompt, sample)."""
    return (seed * 1_000_003 + prompt_index * 10_007 + sample_index) % (2**62)


NamedTensors = Iterable[tuple[str, torch.Tensor]]


class RolloutEngine(abc.ABC):
    """What the RL loop needs from an inference engine."""

    @abc.abstractmethod
    def generate(
        self, prompts: list[list[int]], n_per_prompt: list[int], params: SamplingParams
    ) -> list[list[Completion]]:
        """Sample n_per_prompt[i] completions of prompts[i]; result[i] holds exactly that many."""

    @abc.abstractmethod
    def update_weights(self, named_tensors: NamedTensors, version: int) -> None:
        """Load one bucket of HF-named full tensors and set the weight version.

        The weight sync (:mod:`megatron_sgpo.weights.sync`) buckets the model and calls this once per
        bucket, every call of one sync with the same version."""

    def begin_weight_update(self, version: int) -> None:
        """Called once before the buckets of one sync (SGLang needs a session around them); no-op by default."""

    def end_weight_update(self, version: int) -> None:
        """Called once after the last bucket of one sync, also when a bucket failed; no-op by default."""

    @property
    @abc.abstractmethod
    def weight_version(self) -> int:
        """Version of the weights the next generate call samples from."""

    def release_memory(self) -> None:
        """Free accelerator memory (weights + KV cache) while the trainer runs; no-op by default."""

    def resume_memory(self) -> None:
        """Undo release_memory before the next generate; no-op by default."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Stop every in-flight generation; their completions finish with reason 'abort'."""

    @abc.abstractmethod
    def health(self) -> bool:
        """True when the engine can serve a generate call now."""

    def close(self) -> None:
        """Release the engine's resources; idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


ENGINES = Registry(
    "rollout engine", "a callable (rollout_config, model_path) -> RolloutEngine, e.g. a classmethod from_config",
    builtin={"local": "megatron_sgpo.rollout.local:LocalEngine.from_config",
             "sglang": "megatron_sgpo.rollout.fleet:EngineFleet.from_config",
             "serve": "megatron_sgpo.rollout.fleet:EngineFleet.from_config",
             "vllm": "megatron_sgpo.rollout.vllm:VLLMEngine.from_config"})
