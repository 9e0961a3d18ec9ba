"""Rollout engines: one contract (`RolloutEngine`), three backends (local, SGLang over HTTP, vLLM).

Only the light contract types are imported here; backends are imported from their modules
(`rollout.local`, `rollout.sglang`, `rollout.vllm`) so that no caller pays for transformers,
requests or vLLM it does not use.
"""
from .engine import Completion, EngineError, RolloutEngine, SamplingParams

__all__ = ["Completion", "EngineError", "RolloutEngine", "SamplingParams"]
