"""`sgpo train` with partial rollouts (rollout.partial) against two `sgpo serve` engines: each step trains the first
groups to complete, the rest are resumed under the next weights, and the tokens an older version made reach the
loss with their versions (mismatch.max_staleness=0 masks exactly those). The run is stopped after 2 steps and
resumed from its checkpoint, carried groups included."""
import json
import os

import pytest

from megatron_sgpo.platform.dist import free_port
from megatron_sgpo.rollout.launcher import SGLangLauncher
from megatron_sgpo.tasks.registry import BUNDLED_POLICY
from tests.distributed import read_steps, sgpo

PER_STEP, STEPS = 4, 4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("april_train")
    launchers = [SGLangLauncher.sgpo(str(BUNDLED_POLICY), free_port(), extra_args=["--threads", "1"],
                                     log_path=str(out / f"engine{i}.log")).start(wait=False) for i in range(2)]
    args = ["train", f"run.output_dir={out / 'run'}", "run.mode=grpo", "plan.fixed_n=4", "rollout.engine=serve",
            "rollout.partial=true", "rollout.partial_inflight=2", "mismatch.max_staleness=0", "data.size=40",
            "data.eval_size=0", f"train.prompts_per_step={PER_STEP}", "train.eval_every=0", "train.checkpoint_every=2",
            "rollout.max_new_tokens=24", "rollout.temperature=1.5", "optim.lr=1e-3"]
    try:
        for launcher in launchers:
            launcher.wait_healthy(timeout_s=120)
        urls = ", ".join(x.url for x in launchers)
        sgpo(1, args + [f"rollout.urls=[{urls}]", "train.steps=2"])
        with open(out / "run" / "checkpoints" / "step_2" / "state.json") as f:
            carried = json.load(f)["partial"]
        sgpo(1, args + [f"rollout.urls=[{urls}]", f"train.steps={STEPS}"])
    finally:
        for launcher in launchers:
            launcher.stop()
    return read_steps(str(out / "run")), carried, str(out / "run")


def test_every_step_trains_the_target_and_the_plan_runs_ahead(run):
    steps, carried, out = run
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    assert all(s["samples"] == PER_STEP * 4 for s in steps)
    prompts = [p for s in steps for p in s["prompts"]]
    assert len(set(prompts)) == len(prompts)  # no plan entry trained twice (one epoch)
    assert 0 < len(carried["carried"]) and carried["taken"] == 2 * PER_STEP + len(carried["carried"])
    assert all(s["rollout/carried_groups"] == PER_STEP for s in steps)  # 2 × per_step in flight, per_step trained
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["steps"] == STEPS


def test_recycled_tokens_reach_the_loss_with_their_versions(run):
    steps = run[0]
    assert sum(s["rollout/stale_tokens"] for s in steps) > 0  # some response was resumed under new weights
    for s in steps:  # the loss saw exactly the tokens the rollout tagged as older, and masked them all
        assert s["train/stale_tokens"] == s["rollout/stale_tokens"] == s["train/stale_masked_tokens"], s["step"]
    assert steps[0]["rollout/stale_tokens"] == 0  # nothing older than the first weights


def test_the_ledger_books_every_request(run):
    steps = run[0]
    for s in steps:  # at least every trained token was generated, and more: aborted segments are booked too
        assert s["rollout/tokens"] >= s["train/tokens"] and s["rollout/requests"] >= s["samples"]
