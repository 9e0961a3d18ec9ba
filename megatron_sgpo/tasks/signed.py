"""Signed integer arithmetic, mostly easy: the second task of the sGPO benchmark.

Why a second task: a claim about sGPO must hold on a task it was not tuned on, with another
difficulty profile. On ``arith`` the prompts spread evenly from p≈1 to p≈0. Here most prompts are
easy for the bundled policy (``assets/signed-llama-tiny``), as a real math set is for a strong
model, and a minority is medium or hard: GRPO then spends most of its rollouts on groups whose
advantage is zero. Subtraction, negative answers and parentheses are new to both task and policy.
"""
from __future__ import annotations

import random
from pathlib import Path

from megatron_sgpo.tasks.arith import Level, make_item
from megatron_sgpo.tasks.dataset import TaskItem
from megatron_sgpo.tasks.registry import TaskSpec

POLICY = Path(__file__).resolve().parents[1] / "assets" / "signed-llama-tiny"

LEVELS: dict[int, Level] = {
    1: Level(terms=2, digits=(1, 1), ops="-"),  # 3-7 = -4
    2: Level(terms=3, digits=(1, 1, 1), ops="+-"),  # 7-3+2
    3: Level(terms=2, digits=(2, 1), ops="+-"),  # 42-7
    4: Level(terms=3, digits=(1, 1, 1), ops="+-", group_last=True),  # 7-(3-5)
    5: Level(terms=2, digits=(2, 2), ops="-"),  # 42-57 = -15
}
SHARE: dict[int, float] = {1: 0.55, 2: 0.15, 3: 0.15, 4: 0.1, 5: 0.05}  # fraction of a dataset per level


def make_items(size: int, seed: int) -> list[TaskItem]:
    """``size`` items, levels drawn by ``SHARE`` (so most are easy); deterministic in seed."""
    rng = random.Random(seed)
    levels = rng.choices(list(SHARE), weights=list(SHARE.values()), k=size)
    return [make_item(rng, level, f"signed-{seed}-L{level}-{i}", "signed", LEVELS) for i, level in enumerate(levels)]


TASK = TaskSpec("signed", make_items, verifier="arith", policy=POLICY)
