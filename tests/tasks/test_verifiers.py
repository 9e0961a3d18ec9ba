"""Verifiers on known right and wrong answers, and containment of broken verifiers."""
import logging
import threading
import time

import pytest

from megatron_sgpo.plugins import PluginError
from megatron_sgpo.tasks.dataset import TaskItem
from megatron_sgpo.tasks.verifiers import (
    ExactAnswerVerifier,
    GuardedVerifier,
    MathVerifier,
    VerifierFailure,
    final_answer,
    get_verifier,
)

ITEM = TaskItem("q", "What is 1/2 as a decimal?", "0.5")


def test_math_verify_accepts_equivalent_forms_and_rejects_wrong():
    v = MathVerifier()
    assert v.score(ITEM, "The answer is \\boxed{1/2}.") == 1.0
    assert v.score(ITEM, "\\boxed{\\frac{1}{2}}") == 1.0
    assert v.score(ITEM, "\\boxed{1/3}") == 0.0
    assert v.score(ITEM, "no number here") == 0.0


def test_math_verify_runs_off_the_main_thread():
    """With signal timeouts it would raise in a worker thread; ours disables them."""
    out = []
    t = threading.Thread(target=lambda: out.append(MathVerifier().score(ITEM, "\\boxed{0.5}")))
    t.start()
    t.join()
    assert out == [1.0]


@pytest.mark.parametrize("text,expected", [
    ("so 3+4=7", "7"), ("Answer: 12\nbecause", "12"), ("#### 1,234", "1,234"),
    ("x = 5 and the answer is: 6", "6"), ("42", "42"),
])
def test_final_answer_extraction(text, expected):
    assert final_answer(text).strip() == expected


def test_exact_answer_normalises_numbers_and_case():
    v = ExactAnswerVerifier()
    assert v.score(TaskItem("a", "", "1234"), "#### 1,234.") == 1.0
    assert v.score(TaskItem("a", "", "82"), "37+45 = 82.0") == 1.0
    assert v.score(TaskItem("a", "", "Paris"), "Answer: paris") == 1.0
    assert v.score(TaskItem("a", "", "82"), "37+45 = 83") == 0.0


def test_gym_verifier_counts_only_full_credit():
    from megatron_sgpo.tasks.gym import gym_items

    item = gym_items("countdown", 1, seed=1)[0]
    import reasoning_gym

    ds = reasoning_gym.create_dataset("countdown", size=1, seed=1)
    wrong = "1+1"
    entry = {"question": item.prompt, "answer": item.answer, "metadata": item.meta["gym_metadata"]}
    assert 0 < ds.score_answer(wrong, entry) < 1  # reasoning-gym gives partial credit ...
    v = get_verifier("gym")
    assert v.score(item, f"<answer>{wrong}</answer>") == 0.0  # ... which we count as wrong
    assert v.score(item, f"thinking <answer>{item.answer}</answer>") == 1.0
    assert v.score(item, f"  {item.answer}\n") == 1.0  # no tags: the whole response is the answer


class _Flaky:
    name = "flaky"

    def score(self, item, response_text):
        if response_text == "boom":
            raise RuntimeError("parser exploded")
        if response_text == "slow":
            time.sleep(2.0)
        return 1.0 if response_text == item.answer else 0.0


def test_raising_or_slow_verifier_is_contained_and_counted(caplog):
    v = GuardedVerifier(_Flaky(), timeout_s=0.2)
    with caplog.at_level(logging.WARNING):
        rewards = v.score_batch([ITEM] * 4, ["0.5", "boom", "slow", "0.4"])
    assert rewards == [1.0, 0.0, 0.0, 0.0]
    assert (v.stats.calls, v.stats.errors, v.stats.timeouts) == (4, 1, 1)
    assert "parser exploded" in caplog.text and "timed out" in caplog.text
    assert v.score(ITEM, "0.5") == 1.0  # a fresh worker serves calls after the timeout


def test_verifier_failing_on_every_item_raises_naming_it():
    v = GuardedVerifier(_Flaky(), timeout_s=1.0)
    with pytest.raises(VerifierFailure, match="verifier 'flaky' failed on all 3 items"):
        v.score_batch([ITEM] * 3, ["boom"] * 3)


def test_registry():
    assert get_verifier("arith").score(TaskItem("a", "Q: 2+3=\nA:", "5"), " 5\nQ:") == 1.0
    with pytest.raises(PluginError, match="unknown verifier 'nope'"):
        get_verifier("nope")
