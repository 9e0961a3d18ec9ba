"""The compute ledger's bookkeeping: phases, steps, totals, round trip."""
import json

import pytest

from megatron_sgpo.algo.ledger import ComputeLedger


def test_ledger_totals_and_roundtrip():
    led = ComputeLedger()
    led.add("profiling", 100, 1_000)
    led.start_step(0)
    led.add("rollout", 50, 500)
    led.add("training", 50, 1_500)
    led.add("rollout", 10, 100)
    led.start_step(1)
    led.add("logprob", 60, 600)
    assert led.step_totals(-1) == {"profiling": {"tokens": 100, "flops": 1_000}}
    assert led.step_totals(0) == {"rollout": {"tokens": 60, "flops": 600}, "training": {"tokens": 50, "flops": 1_500}}
    phases = led.phase_totals()
    assert led.total_flops == sum(v["flops"] for v in phases.values()) == 3_700
    assert led.total_tokens == 270
    back = ComputeLedger.from_dict(json.loads(json.dumps(led.to_dict())))
    assert back.phase_totals() == phases and back.current_step == 1 and back.step_totals(0) == led.step_totals(0)


def test_ledger_errors():
    led = ComputeLedger()
    with pytest.raises(ValueError, match="phase must be one of"):
        led.add("eval", 1, 1)
    with pytest.raises(ValueError, match="tokens and flops must be >= 0"):
        led.add("rollout", -1, 1)
    led.start_step(3)
    with pytest.raises(ValueError, match="steps must not go backwards: 2 < 3"):
        led.start_step(2)
