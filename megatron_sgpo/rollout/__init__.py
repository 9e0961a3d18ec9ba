"""Rollout: one engine contract (`RolloutEngine`, the `ENGINES` registry), backends, and groups of scored samples.

Only the light contract types are imported here; backends are imported from their modules
(`rollout.local`, `rollout.sglang`, `rollout.vllm`) so that no caller pays for transformers,
requests or vLLM it does not use. `rollout.groups` turns prompts into groups of scored completions.
"""
from .engine import Completion, EngineError, RolloutEngine, SamplingParams

__all__ = ["Completion", "EngineError", "RolloutEngine", "SamplingParams"]
