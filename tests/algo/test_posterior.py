"""Online Beta posterior: decayed updates, re-planning, checkpoint round trip."""
import json

import pytest

from megatron_sgpo.algo.plan import PlanConfig
from megatron_sgpo.algo.posterior import OnlinePosteriorConfig, PosteriorTracker
from megatron_sgpo.algo.profile import PromptProfile


def test_default_is_off():
    assert OnlinePosteriorConfig().enabled is False


def test_decayed_update_by_hand():
    t = PosteriorTracker.from_profiles(
        [PromptProfile("a", 1, 4, 5.0, 2.0, 4.0)],
        PlanConfig(n_min=2, n_max=16),
        OnlinePosteriorConfig(enabled=True, decay=0.5),
    )
    # alpha: 0.5*(2-1)+1+3 = 4.5 ; beta: 0.5*(4-1)+1+1 = 3.5
    assert t.update("a", [1, 1, 1, 0]) == (4.5, 3.5)
    assert t.posterior_mean("a") == pytest.approx(4.5 / 8)
    assert t.group_size("a") == 2  # ceil(8/4.5) = 2
    # an unseen prompt starts from the prior: alpha = 1 + 0, beta = 1 + 3
    assert t.update("new", [0, 0, 0]) == (1.0, 4.0)
    assert t.group_size("new") == 5


def test_no_decay_accumulates_counts():
    t = PosteriorTracker(PlanConfig(), OnlinePosteriorConfig(enabled=True, decay=1.0))
    for _ in range(3):
        t.update("x", [1, 0])
    assert t.posterior("x") == (4.0, 4.0)


def test_reprofile_schedule():
    t = PosteriorTracker(PlanConfig(), OnlinePosteriorConfig(reprofile_every=3))
    assert [s for s in range(10) if t.due_for_reprofile(s)] == [3, 6, 9]
    off = PosteriorTracker(PlanConfig(), OnlinePosteriorConfig(reprofile_every=0))
    assert not any(off.due_for_reprofile(s) for s in range(10))


def test_roundtrip_and_validation():
    t = PosteriorTracker(PlanConfig(n_max=8), OnlinePosteriorConfig(enabled=True, decay=0.9, prior=(2, 2)))
    t.update(3, [1.0, 0.0, 1.0])
    back = PosteriorTracker.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back.posterior(3) == t.posterior(3) and back.cfg == t.cfg and back.plan_cfg == t.plan_cfg
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\], got 0"):
        OnlinePosteriorConfig(decay=0)
    with pytest.raises(ValueError, match="NaN reward"):
        t.update(3, [float("nan")])
