"""The second benchmark task: signed sums with parentheses, mostly easy prompts, and its bundled policy."""
import json
import random
from collections import Counter

import pytest

from megatron_sgpo.tasks import arith, signed
from megatron_sgpo.tasks.registry import get_task


@pytest.mark.parametrize("level", sorted(signed.LEVELS))
def test_levels_have_their_shape_and_answers_equal_python_evaluation(level):
    spec = signed.LEVELS[level]
    rng = random.Random(level)
    values = set()
    for _ in range(300):
        expr, value = arith.make_problem(rng, level, signed.LEVELS)
        assert value == eval(expr)  # Python's own parser: precedence and parentheses
        assert ("(" in expr) == spec.group_last and expr.count("(") <= 1
        terms = expr.replace("(", "").replace(")", "").replace("-", "+").split("+")
        assert [len(t) for t in terms] == list(spec.digits)
        values.add(value)
    assert min(values) < 0 or level == 3  # negative answers occur on every subtracting level


def test_group_last_changes_the_value_where_it_should():
    table = {1: arith.Level(terms=3, digits=(1, 1, 1), ops="-", group_last=True)}
    expr, value = arith.make_problem(random.Random(0), 1, table)
    a, rest = expr.split("-(")
    b, c = rest.rstrip(")").split("-")
    assert value == int(a) - (int(b) - int(c)) and expr == f"{a}-({b}-{c})"


def test_items_are_deterministic_mostly_easy_and_in_the_stated_shares():
    items = signed.make_items(4000, seed=5)
    assert items == signed.make_items(4000, seed=5) and items != signed.make_items(4000, seed=6)
    assert len({i.id for i in items}) == 4000
    counts = Counter(i.meta["level"] for i in items)
    for level, share in signed.SHARE.items():
        assert abs(counts[level] / 4000 - share) < 0.025, (level, counts)
    for item in items[:200]:
        assert item.prompt.startswith("Q: ") and item.prompt.endswith("=\nA:")
        assert int(item.answer) == eval(item.prompt[3:-4]) and item.meta["task"] == "signed"


def test_registry_pairs_the_task_with_its_verifier_and_policy():
    task = get_task("signed")
    assert task.verifier == "arith" and task.policy == signed.POLICY
    assert task.make_items(10, 1) == signed.make_items(10, 1)


def test_bundled_policy_loads_shares_the_vocabulary_and_finds_most_prompts_easy():
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(signed.POLICY)
    assert tok.get_vocab() == transformers.AutoTokenizer.from_pretrained(get_task("arith").policy).get_vocab()
    prompt = arith.format_prompt("7-(3-5)")
    assert tok.decode(tok(prompt)["input_ids"], skip_special_tokens=True) == prompt
    transformers.AutoModelForCausalLM.from_pretrained(signed.POLICY)
    info = json.loads((signed.POLICY / "training_info.json").read_text())
    assert info["args"]["task"] == "signed"
    rates = {int(k): v for k, v in info["success_rate_by_level"].items()}
    easy = sum(share for level, share in signed.SHARE.items() if rates[level] >= 0.8)
    assert easy >= 0.5  # the profile this task exists for: most prompts are easy
    assert any(0.1 < rates[lv] < 0.8 for lv in rates)  # and some are still worth training on
