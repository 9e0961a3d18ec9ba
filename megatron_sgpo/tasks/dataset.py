"""Prompt datasets as JSONL: one {"prompt", "answer", optional "id", ...} object per line.

Every other field of a row is kept in ``TaskItem.meta`` so task generators can carry
difficulty levels or sources through profiling and planning untouched.
Errors name ``file:line`` because datasets are edited by hand and a bad row in a
100k-line file must be findable.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass(frozen=True)
class TaskItem:
    """One verifiable prompt: the text given to the policy and the reference answer."""

    id: str
    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        """The JSONL row; meta fields are flattened next to prompt/answer/id."""
        row = {"id": self.id, "prompt": self.prompt, "answer": self.answer}
        for key, value in self.meta.items():
            if key not in row:
                row[key] = value
        return row


def _row_to_item(row: Any, where: str, index: int) -> TaskItem:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in ("prompt", "answer"):
        if key not in row or row[key] is None:
            raise ValueError(f"{where}: row has no {key!r} field")
    if not isinstance(row["prompt"], str):
        raise ValueError(f"{where}: 'prompt' must be a string")
    answer = row["answer"]
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str):
        raise ValueError(f"{where}: 'answer' must be a string or a number")
    item_id = row.get("id", index)
    meta = {k: v for k, v in row.items() if k not in ("id", "prompt", "answer")}
    return TaskItem(id=str(item_id), prompt=row["prompt"], answer=answer, meta=meta)


def load_jsonl(path: str | os.PathLike) -> list[TaskItem]:
    """Read a JSONL dataset; ids default to the 0-based line index.

    Blank lines are skipped (but still counted for line numbers and default ids). A malformed line,
    a row without prompt/answer or a repeated id raises ValueError naming file:line.
    """
    path = os.fspath(path)
    items: list[TaskItem] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: malformed JSON ({e.msg})") from None
            item = _row_to_item(row, where, lineno - 1)
            if item.id in seen:
                raise ValueError(
                    f"{where}: duplicate id {item.id!r} (first seen at line {seen[item.id]})")
            seen[item.id] = lineno
            items.append(item)
    return items


def write_jsonl(items: Iterable[TaskItem], path: str | os.PathLike) -> int:
    """Write items as JSONL (creating parent folders); returns the number of rows."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item.to_row(), ensure_ascii=False) + "\n")
            n += 1
    return n
