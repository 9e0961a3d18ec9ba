"""Sequential profiling's stopping rule against posteriors computed by hand, and the profiling pass it drives."""
import math
from types import SimpleNamespace

import pytest

from megatron_sgpo.algo.sequential_profile import SequentialRule
from megatron_sgpo.config import RunConfig
from megatron_sgpo.loop.profiling import _sample_chunk
from megatron_sgpo.rollout.engine import Completion
from megatron_sgpo.rollout.groups import Group
from megatron_sgpo.tasks.dataset import TaskItem


def _beta_cdf_integer(x, a, b):
    """Beta(a, b) CDF for integer shapes: P(Binomial(a + b - 1, x) >= a), an independent formula."""
    m = a + b - 1
    return sum(math.comb(m, j) * x**j * (1 - x) ** (m - j) for j in range(a, m + 1))


def _quantile(q, a, b):
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _beta_cdf_integer(mid, a, b) < q else (lo, mid)
    return lo


RULE = SequentialRule(round_size=2, confidence=0.8, unsolvable_below=0.3, solved_above=0.7)


def test_all_successes_decide_solved_exactly_when_the_hand_computed_lower_bound_passes_0_7():
    # f = 0: Beta(1 + s, 1) has CDF x^(1+s), so the 10 % quantile is 0.1^(1/(1+s)): 0.681 at s = 5, 0.720 at s = 6
    assert 0.1 ** (1 / 6) < 0.7 < 0.1 ** (1 / 7)
    assert RULE.decide(5, 0) is None and RULE.decide(6, 0) == "solved"
    assert RULE.decide(0, 5) is None and RULE.decide(0, 6) == "unsolvable"


@pytest.mark.parametrize("s,f", [(1, 1), (2, 2), (4, 4), (6, 6), (10, 10), (3, 9), (12, 3), (1, 12), (20, 20)])
def test_decisions_follow_the_credible_interval_computed_independently(s, f):
    a, b = 1 + s, 1 + f
    lo, hi = _quantile(0.1, a, b), _quantile(0.9, a, b)
    expected = ("unsolvable" if hi <= 0.3 else "solved" if lo >= 0.7 else "between" if 0.3 < lo and hi < 0.7
                else None)
    assert RULE.decide(s, f) == expected


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="unsolvable_below < solved_above"):
        SequentialRule(unsolvable_below=0.8, solved_above=0.7)


class _Runner:
    """Rewards fixed per prompt (its success pattern, cycled), one token per response; records each call."""

    def __init__(self, patterns):
        self.patterns, self.calls, self.drawn = patterns, [], dict.fromkeys(patterns, 0)

    def run(self, items, ns, params):
        self.calls.append([it.id for it in items])
        groups = []
        for it, n in zip(items, ns):
            pat, start = self.patterns[it.id], self.drawn[it.id]
            rewards = [float(pat[(start + j) % len(pat)]) for j in range(n)]
            self.drawn[it.id] += n
            completions = [Completion(0, [7], [-1.0], "stop") for _ in range(n)]
            groups.append(Group(it, [1, 2, 3], completions, ["x"] * n, rewards))
        return groups

    def cost(self, groups):
        tokens = sum(len(g.prompt_ids) + 1 for g in groups for _ in g.rewards)
        return tokens, 10.0 * tokens


def test_sequential_profiling_stops_clear_prompts_early_and_books_only_what_it_drew():
    patterns = {"easy": [1], "hard": [0], "mid": [1, 0]}
    items = [TaskItem(id=i, prompt=i, answer="") for i in patterns]
    runner = _Runner(patterns)
    cfg = RunConfig(profile=type(RunConfig().profile)(k=12, sequential=True))
    rows = {r["id"]: r for r in _sample_chunk(SimpleNamespace(runner=runner), cfg, items, seed=5)}
    # hand-computed above: 6 straight successes (failures) decide; a 50 % prompt decides "between" at 4 of 8
    assert RULE.decide(3, 3) is None and RULE.decide(4, 4) == "between"
    assert [len(rows[i]["rewards"]) for i in patterns] == [6, 6, 8]
    assert rows["mid"]["rewards"] == [1.0, 0.0] * 4
    assert runner.calls == [["easy", "hard", "mid"]] * 3 + [["mid"]]
    assert sum(r["tokens"] for r in rows.values()) == 4 * (6 + 6 + 8)  # booked = drawn (3 prompt + 1 response)
    plain = _sample_chunk(SimpleNamespace(runner=_Runner(patterns)), RunConfig(profile=type(cfg.profile)(k=12)),
                          items, seed=5)
    assert [len(r["rewards"]) for r in plain] == [12, 12, 12]
