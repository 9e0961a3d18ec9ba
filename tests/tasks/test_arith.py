"""The arith generator: deterministic, levels as documented, answers correct; its verifier."""
import random

import pytest

from megatron_sgpo.plugins import PluginError
from megatron_sgpo.tasks import arith
from megatron_sgpo.tasks.dataset import TaskItem
from megatron_sgpo.tasks.registry import get_task


def test_same_seed_same_items_other_seed_other_items():
    a, b, c = arith.generate(20, seed=3), arith.generate(20, seed=3), arith.generate(20, seed=4)
    assert a == b
    assert [i.prompt for i in a] != [i.prompt for i in c]
    assert len({i.id for i in a}) == len(a) == 100


@pytest.mark.parametrize("level", sorted(arith.LEVELS))
def test_levels_have_the_documented_shape_and_correct_answers(level):
    spec = arith.LEVELS[level]
    rng = random.Random(level)
    for _ in range(200):
        expr, value = arith.make_problem(rng, level)
        ops = [ch for ch in expr if ch in "+-*"]
        terms = expr.replace("-", "+").replace("*", "+").split("+")
        assert len(terms) == spec.terms and set(ops) <= set(spec.ops)
        assert [len(t) for t in terms] == list(spec.digits)
        assert value == eval(expr)  # left-to-right equals precedence for these levels


def test_items_are_interleaved_by_level_and_carry_their_level():
    items = arith.generate(3, seed=0)
    assert [i.meta["level"] for i in items] == [1, 2, 3, 4, 5] * 3
    first = items[0]
    assert first.prompt.startswith("Q: ") and first.prompt.endswith("=\nA:")
    expr = first.prompt[3:-4]
    assert int(first.answer) == eval(expr)


def test_harder_levels_have_longer_answers_on_average():
    items = arith.generate(200, seed=1)
    mean_len = {lv: sum(len(i.answer) for i in items if i.meta["level"] == lv) / 200 for lv in (1, 3, 5)}
    assert mean_len[1] < mean_len[3] < mean_len[5]


@pytest.mark.parametrize("response,reward", [
    ("82", 1.0), (" 82\nQ: 1+1=", 1.0), ("82<eos>", 1.0), ("082", 1.0),
    ("83", 0.0), ("82.0", 0.0), ("8 2", 0.0), ("", 0.0), ("\n82", 0.0), ("eighty-two", 0.0),
])
def test_verifier_is_exact_integer_match_before_newline(response, reward):
    item = TaskItem("x", "Q: 37+45=\nA:", "82", {"level": 3})
    assert arith.ArithVerifier().score(item, response) == reward


def test_registry_entry():
    task = get_task("arith")
    items = task.make_items(12, 7)
    assert len(items) == 12 and items == get_task("arith").make_items(12, 7)
    assert {i.meta["level"] for i in items} == {1, 2, 3, 4, 5}
    assert task.verifier == "arith" and task.policy.name == "arith-llama-tiny"
    assert get_task("gym:chain_sum").verifier == "gym"
    with pytest.raises(PluginError, match="unknown task 'nope'"):
        get_task("nope")
