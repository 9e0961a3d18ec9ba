"""`sgpo train` at PP=2 against two `sgpo serve` engines, weights through the broadcast groups
(rollout.weight_sync=distributed), shared-memory handles (tensor) or files (disk): every step samples from the
weights of the step before on both engines."""
import json
import os

import pytest
import requests

from megatron_sgpo.platform.dist import free_port
from megatron_sgpo.rollout.launcher import SGLangLauncher
from megatron_sgpo.tasks.registry import BUNDLED_POLICY
from tests.distributed import read_steps, sgpo

STEPS = 3


@pytest.fixture(scope="module", params=["distributed", "tensor", "disk"])
def run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"fleet_train_{request.param}")
    launchers = [SGLangLauncher.sgpo(str(BUNDLED_POLICY), free_port(), extra_args=["--threads", "1"],
                                     log_path=str(out / f"engine{i}.log")).start(wait=False) for i in range(2)]
    try:
        for launcher in launchers:
            launcher.wait_healthy(timeout_s=120)
        urls = ", ".join(x.url for x in launchers)
        sgpo(2, ["train", f"run.output_dir={out / 'run'}", "run.mode=grpo", "plan.fixed_n=4", "model.parallel.pp=2",
                 "rollout.engine=serve", f"rollout.urls=[{urls}]", f"rollout.weight_sync={request.param}",
                 "data.size=40", "data.eval_size=0", f"train.steps={STEPS}", "train.prompts_per_step=4",
                 "train.eval_every=0", "rollout.max_new_tokens=5", "optim.lr=1e-3"])
        versions = [requests.get(x.url + "/model_info", timeout=10).json()["weight_version"] for x in launchers]
        served = [sum("POST /generate" in line for line in open(out / f"engine{i}.log")) for i in range(2)]
    finally:
        for launcher in launchers:
            launcher.stop()
    return read_steps(str(out / "run")), versions, served, str(out / "run")


def test_the_run_finishes_and_both_engines_hold_the_last_version(run):
    steps, versions, served, out = run
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    assert [int(v) for v in versions] == [STEPS, STEPS]
    assert min(served) > 0  # both engines generated
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["steps"] == STEPS


def test_each_step_samples_from_the_weights_trained_before_it(run):
    steps = run[0]
    assert [s["rollout/weight_version"] for s in steps] == list(range(STEPS))
    for s in steps:  # engine vs trainer log-probs of the sampled tokens, per token
        assert s["train/mismatch_abs_sum"] / s["train/tokens"] <= 1e-4, s["step"]
