"""Procedural integer arithmetic with graded difficulty: the task of the CPU quickstart.

The bundled tiny policy (``megatron_sgpo/assets/arith-llama-tiny``) was trained on this
very distribution, so its success rate falls from p≈1 on level 1 to p≈0 on level 5 and
sGPO has easy, medium and unsolvable prompts to sort. Prompts are deliberately short
("Q: 37+45=\\nA:") so a character-level model with a tiny vocabulary can read them;
reasoning-gym's chain_sum/basic_arithmetic wrap the same sums in long instruction
sentences, which would dominate a 2M-parameter model's context, so we generate our own.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Sequence

from megatron_sgpo.tasks.dataset import TaskItem
from megatron_sgpo.tasks.registry import BUNDLED_POLICY, TaskSpec


@dataclass(frozen=True)
class Level:
    """A difficulty level: how many terms, how many digits per term, which operators."""

    terms: int
    digits: tuple[int, ...]  # digits of each term, len == terms
    ops: str  # operators drawn uniformly between terms
    group_last: bool = False  # parenthesise the last two terms: a-(b+c)


# Ordered by how fast the tiny model learns them, not by textbook difficulty: 1-digit sums
# (100 facts) are memorised first, 3-term 1-digit sums and 2-digit+1-digit sums next;
# 2-digit+2-digit sums need carry lookahead (answers are written most significant digit
# first) and stay rare; 3-digit products are out of reach but still get integer answers.
LEVELS: dict[int, Level] = {
    1: Level(terms=2, digits=(1, 1), ops="+"),
    2: Level(terms=3, digits=(1, 1, 1), ops="+"),
    3: Level(terms=2, digits=(2, 1), ops="+"),
    4: Level(terms=2, digits=(2, 2), ops="+"),
    5: Level(terms=2, digits=(3, 3), ops="*"),
}

PROMPT_TEMPLATE = "Q: {expr}=\nA:"
_INT = re.compile(r"^-?\d+$")


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def make_problem(rng: random.Random, level: int, table: dict[int, Level] = LEVELS) -> tuple[str, int]:
    """One expression of the given level of ``table`` and its value (left to right, parentheses first)."""
    spec = table[level]
    values = [_operand(rng, d) for d in spec.digits]
    ops = [rng.choice(spec.ops) for _ in range(spec.terms - 1)]
    terms = [str(v) for v in values]
    if spec.group_last:  # a-(b+c): the last two terms become one
        terms[-2:] = [f"({terms[-2]}{ops[-1]}{terms[-1]})"]
        values[-2:] = [_apply(ops[-1], values[-2], values[-1])]
        ops = ops[:-1]
    expr, total = terms[0], values[0]
    for op, term, v in zip(ops, terms[1:], values[1:]):
        expr += op + term
        total = _apply(op, total, v)
    return expr, total


def format_prompt(expr: str) -> str:
    return PROMPT_TEMPLATE.format(expr=expr)


def make_item(rng: random.Random, level: int, item_id: str, task: str = "arith",
              table: dict[int, Level] = LEVELS) -> TaskItem:
    expr, value = make_problem(rng, level, table)
    return TaskItem(id=item_id, prompt=format_prompt(expr), answer=str(value), meta={"level": level, "task": task})


def generate(n_per_level: int, levels: Sequence[int] | None = None, seed: int = 0, prefix: str = "arith",
             table: dict[int, Level] = LEVELS, task: str = "arith") -> list[TaskItem]:
    """``n_per_level`` items of each level of ``table``, interleaved by level; same seed, same items."""
    rng = random.Random(seed)
    return [make_item(rng, level, f"{prefix}-{seed}-L{level}-{i}", task, table)
            for i in range(n_per_level) for level in (levels or tuple(table))]


def extract_response_answer(response_text: str) -> str:
    """The response up to the first newline (eos is stripped by decoding), trimmed."""
    return response_text.split("<eos>", 1)[0].split("\n", 1)[0].strip()


class ArithVerifier:
    """Reward 1 iff the response (before eos/newline) is exactly the integer answer."""

    name = "arith"

    def score(self, item: TaskItem, response_text: str) -> float:
        got = extract_response_answer(response_text)
        if not _INT.match(got):
            return 0.0
        return float(int(got) == int(item.answer))


def make_items(size: int, seed: int) -> list[TaskItem]:
    """``size`` items spread evenly over the levels (round-robin), deterministic in seed."""
    return generate(-(-size // len(LEVELS)), seed=seed)[:size]


TASK = TaskSpec("arith", make_items, verifier="arith", policy=BUNDLED_POLICY)
