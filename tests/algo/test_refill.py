"""DAPO dynamic sampling with refill: the step ends with exactly its target of informative groups, and every
generated group comes back for booking."""
from dataclasses import dataclass

import pytest

from megatron_sgpo.algo.refill import informative, refill


@dataclass
class G:
    rewards: list


def _draws(batches):
    """draw(round, count) serving the given batches in turn; records the counts asked for."""
    asked = []

    def draw(rnd, count):
        asked.append((rnd, count))
        return batches[rnd][:count] if rnd < len(batches) else []

    return draw, asked


def test_refill_tops_up_to_exactly_the_target_and_returns_every_generated_group():
    first = [G([1, 1]), G([0, 1]), G([0, 0]), G([1, 1])]  # one informative of four
    more = [[G([0, 1]), G([1, 1]), G([1, 0]), G([0, 0]), G([0, 1]), G([1, 0]), G([0, 1]), G([0, 1]),
             G([1, 0]), G([0, 1]), G([1, 0]), G([0, 1])]]
    draw, asked = _draws(more)
    result = refill(first, draw, target=4, max_rounds=3)
    assert len(result.trained) == 4 and all(informative(g) for g in result.trained) and result.short == 0
    assert asked == [(0, 12)]  # 3 missing at an informative rate of 1/4 -> ask for 12
    assert result.generated == first + more[0]  # everything generated is booked, surplus included
    assert result.trained[0] is first[1]  # the step's own informative groups come first


def test_refill_stops_after_max_rounds_short_of_the_target():
    draw, asked = _draws([[G([0, 0])], [G([1, 1])], [G([0, 1])]])
    result = refill([G([1, 1]), G([0, 0])], draw, target=2, max_rounds=2)
    assert result.rounds == 2 and len(asked) == 2 and result.short == 2 and result.trained == []
    assert len(result.generated) == 4


def test_refill_does_nothing_when_the_step_is_already_full_or_the_pool_is_empty():
    full = [G([0, 1]), G([1, 0])]
    draw, asked = _draws([])
    assert refill(full, draw, 2, 5).generated == full and asked == []
    result = refill([G([1, 1])], draw, 1, 5)  # pool exhausted: one round, then stop
    assert result.rounds == 1 and result.short == 1
    with pytest.raises(ValueError, match="target >= 1"):
        refill(full, draw, 0, 1)
