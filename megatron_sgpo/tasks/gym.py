"""TaskItems from reasoning-gym's procedural tasks, and their JSONL export.

reasoning-gym generates unlimited verifiable prompts offline (countdown, basic_arithmetic,
chain_sum, gsm_symbolic, ...), which is what profiling and sGPO need beyond GSM8K. Each
item keeps the task name and the generator's metadata so ``GymVerifier`` can call the
task's own ``score_answer`` later, from the JSONL alone.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

from megatron_sgpo.tasks.dataset import TaskItem, write_jsonl

DEFAULT_TASKS = ("countdown", "basic_arithmetic", "chain_sum", "gsm_symbolic")


def _jsonable(value: Any) -> Any:
    """Metadata as plain JSON values (tuples → lists, unknown objects → str)."""
    return json.loads(json.dumps(value, default=str))


def gym_items(task: str, size: int, seed: int = 0, **config: Any) -> list[TaskItem]:
    """``size`` items of one reasoning-gym task; extra kwargs go to its config."""
    import reasoning_gym  # optional dependency: pip install reasoning-gym==0.1.25

    dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **config)
    items = []
    for index in range(size):
        entry = dataset[index]
        items.append(TaskItem(
            id=f"{task}-{seed}-{index}", prompt=entry["question"], answer=str(entry["answer"]),
            meta={"task": task, "gym_task": task, "gym_metadata": _jsonable(entry.get("metadata", {})),
                  "verifier": "gym"}))
    return items


def mixed_gym_items(tasks: Sequence[str] = DEFAULT_TASKS, size_per_task: int = 100,
                    seed: int = 0) -> list[TaskItem]:
    """Several tasks concatenated (each task seeded with ``seed``), ids unique per task."""
    items: list[TaskItem] = []
    for task in tasks:
        items.extend(gym_items(task, size_per_task, seed=seed))
    return items


def write_gym_jsonl(path: str | os.PathLike, tasks: Sequence[str] = DEFAULT_TASKS,
                    size_per_task: int = 100, seed: int = 0) -> int:
    """Generate and write a gym dataset as JSONL; returns the number of rows (used by the CLI)."""
    return write_jsonl(mixed_gym_items(tasks, size_per_task, seed), path)
