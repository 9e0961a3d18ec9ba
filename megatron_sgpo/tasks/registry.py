"""Tasks by name, so configs and the CLI can say ``task: arith`` or ``task: gym:countdown``.

A task couples an item generator with the verifier that scores it (and, for arith, the
bundled policy trained on it), so a run cannot pair prompts with the wrong checker.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from megatron_sgpo.tasks.dataset import TaskItem

BUNDLED_POLICY = Path(__file__).resolve().parents[1] / "assets" / "arith-llama-tiny"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    verifier: str  # a name for verifiers.get_verifier
    make_items: Callable[[int, int], list[TaskItem]]  # (size, seed) -> items
    policy: Path | None = None  # a bundled HF policy folder trained for this task, if any


def _arith_items(size: int, seed: int) -> list[TaskItem]:
    """``size`` items spread evenly over the levels (round-robin), deterministic in seed."""
    from megatron_sgpo.tasks import arith

    per_level = -(-size // len(arith.LEVELS))
    return arith.generate(per_level, seed=seed)[:size]


def _gym_items(task: str) -> Callable[[int, int], list[TaskItem]]:
    def make(size: int, seed: int) -> list[TaskItem]:
        from megatron_sgpo.tasks.gym import gym_items

        return gym_items(task, size, seed=seed)
    return make


TASKS: dict[str, TaskSpec] = {
    "arith": TaskSpec("arith", "arith", _arith_items, policy=BUNDLED_POLICY),
}


def get_task(name: str) -> TaskSpec:
    """A registered task, or ``gym:<reasoning-gym task>`` for any reasoning-gym dataset."""
    if name in TASKS:
        return TASKS[name]
    if name.startswith("gym:") and len(name) > 4:
        return TaskSpec(name, "gym", _gym_items(name[4:]))
    raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)} or gym:<reasoning-gym task>")
