"""Tasks by name, so configs and the CLI can say ``task: arith``, ``task: gym:countdown`` or ``task: my_tasks:TASK``.

A task couples an item generator with the verifier that scores it (and, for arith, the bundled
policy trained on it), so a run cannot pair prompts with the wrong checker. Contract of a plug-in
task: a :class:`TaskSpec`, or a function ``(size, seed) -> list[TaskItem]`` (then ``data.verifier``
names the verifier).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from megatron_sgpo.plugins import PluginError, Registry
from megatron_sgpo.tasks.dataset import TaskItem

BUNDLED_POLICY = Path(__file__).resolve().parents[1] / "assets" / "arith-llama-tiny"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    make_items: Callable[[int, int], list[TaskItem]]  # (size, seed) -> items, deterministic in seed
    verifier: str | None = None  # the task's verifier (a VERIFIERS name or dotted path); None: data.verifier decides
    policy: Path | None = None  # a bundled HF policy folder trained for this task, if any


TASKS = Registry("task", "a TaskSpec, or a function (size, seed) -> list[TaskItem]",
                 builtin={"arith": "megatron_sgpo.tasks.arith:TASK", "signed": "megatron_sgpo.tasks.signed:TASK"})


def _gym_items(task: str) -> Callable[[int, int], list[TaskItem]]:
    def make(size: int, seed: int) -> list[TaskItem]:
        from megatron_sgpo.tasks.gym import gym_items

        return gym_items(task, size, seed=seed)
    return make


def get_task(name: str) -> TaskSpec:
    """A built-in task, ``gym:<reasoning-gym task>`` for any reasoning-gym dataset, or a plug-in by dotted path."""
    if name.startswith("gym:") and len(name) > 4:
        return TaskSpec(name, _gym_items(name[4:]), verifier="gym")
    obj = TASKS.resolve(name)
    if isinstance(obj, TaskSpec):
        return obj
    if callable(obj):
        return TaskSpec(name, obj)
    raise PluginError(f"task {name!r} is a {type(obj).__name__}, not {TASKS.contract}")
