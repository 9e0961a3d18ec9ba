"""Verifiable prompts: JSONL datasets, task generators (arith, reasoning-gym, GSM8K) and verifiers.

Optional dependencies (math-verify, reasoning-gym) are imported only by the verifier or
generator that needs them, so ``import megatron_sgpo.tasks`` stays cheap.
"""
from megatron_sgpo.tasks.dataset import TaskItem, load_jsonl, write_jsonl
from megatron_sgpo.tasks.registry import BUNDLED_POLICY, TaskSpec, get_task
from megatron_sgpo.tasks.verifiers import GuardedVerifier, Verifier, VerifierFailure, get_verifier

__all__ = ["TaskItem", "load_jsonl", "write_jsonl", "BUNDLED_POLICY", "TaskSpec", "get_task",
           "GuardedVerifier", "Verifier", "VerifierFailure", "get_verifier"]
