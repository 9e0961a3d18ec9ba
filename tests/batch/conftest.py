"""A realistic sGPO step for the batcher tests: per-prompt group sizes and long-tailed lengths."""
import numpy as np
import pytest


def make_sgpo_step(rng: np.random.Generator, n_prompts: int, max_len: int = 8192):
    """Group size n = clamp(ceil(1/p), 2, 64) with p ~ Beta(1, 2); log-normal prompt and response lengths."""
    p = rng.beta(1.0, 2.0, n_prompts)
    sizes = np.clip(np.ceil(1.0 / np.maximum(p, 1e-6)), 2, 64).astype(np.int64)
    group_ids = np.repeat(np.arange(n_prompts), sizes)
    prompt = np.clip(rng.lognormal(5.5, 0.6, n_prompts), 16, max_len // 4).astype(np.int64)
    response = np.clip(rng.lognormal(6.5, 1.0, len(group_ids)), 1, max_len - max_len // 4).astype(np.int64)
    return prompt[group_ids] + response, group_ids


@pytest.fixture
def sgpo_step():
    return make_sgpo_step
