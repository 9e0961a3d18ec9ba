"""Asynchronous RL (rollout.asynchronous) in `sgpo train` against two `sgpo serve` engines (deterministic, seeded),
sGPO with online posteriors re-profiled every 2 steps, so group sizes depend on every reward seen before:
staleness 0 reproduces the synchronous run exactly; staleness 1 trains every step on the weights of the step
before, never older; SIGKILL mid-run and a restart train every step once, with the same group sizes, and book
the same compute as the run that was not interrupted."""
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from megatron_sgpo.algo.samples import StepSamples
from megatron_sgpo.config import ConfigError, load_config
from megatron_sgpo.loop.producer import drop_stale
from megatron_sgpo.platform.dist import free_port
from megatron_sgpo.rollout.launcher import SGLangLauncher
from megatron_sgpo.tasks.registry import BUNDLED_POLICY
from tests.distributed import ENV, read_steps, sgpo, sgpo_command, signal_tree

STEPS = 5
SAME = ("prompts", "group_sizes", "reward_mean", "rollout/tokens", "rollout/weight_version")


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    out = tmp_path_factory.mktemp("async_engines")
    launchers = [SGLangLauncher.sgpo(str(BUNDLED_POLICY), free_port(), extra_args=["--threads", "1"],
                                     log_path=str(out / f"engine{i}.log")).start(wait=False) for i in range(2)]
    try:
        for launcher in launchers:
            launcher.wait_healthy(timeout_s=120)
        yield "[" + ", ".join(x.url for x in launchers) + "]"
    finally:
        for launcher in launchers:
            launcher.stop()


def args(out, urls, *extra):
    return ["train", f"run.output_dir={out}", "run.mode=sgpo", "online.enabled=true", "online.reprofile_every=2",
            "profile.k=4", "rollout.engine=serve",
            f"rollout.urls={urls}", "rollout.release_memory=false", "data.size=100", "data.eval_size=0",
            f"train.steps={STEPS}", "train.prompts_per_step=4", "train.eval_every=0", "train.checkpoint_every=0",
            "rollout.max_new_tokens=6", "optim.lr=1e-3", *extra]


@pytest.fixture(scope="module")
def runs(engines, tmp_path_factory):
    root = tmp_path_factory.mktemp("async_runs")
    settings = {"sync": [], "async0": ["rollout.asynchronous=true", "rollout.max_staleness=0"],
                "async1": ["rollout.asynchronous=true", "rollout.max_staleness=1", "mismatch.tis=token",
                           "train.checkpoint_every=1"]}
    for name, extra in settings.items():
        sgpo(1, args(root / name, engines, *extra))
    return {name: str(root / name) for name in settings}


def by_step(out):
    """The last row logged for each step (a resumed run logs again the steps after its checkpoint)."""
    return {row["step"]: row for row in read_steps(out)}


def summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def test_staleness_zero_is_the_synchronous_run_exactly(runs):
    sync, async0 = read_steps(runs["sync"]), read_steps(runs["async0"])
    assert len(sync) == len(async0) == STEPS
    for a, b in zip(sync, async0):
        assert {k: a[k] for k in SAME + ("train/loss", "train/grad_norm")} == \
               {k: b[k] for k in SAME + ("train/loss", "train/grad_norm")}, a["step"]
    assert summary(runs["sync"])["compute"] == summary(runs["async0"])["compute"]


def test_staleness_one_trains_on_the_weights_of_the_step_before_never_older(runs):
    steps = read_steps(runs["async1"])
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    for s in steps:  # step k (from 1) trains policy version k-1 on tokens of version max(k-2, 0)
        assert s["rollout/weight_version"] == max(s["step"] - 2, 0)
        assert (s["train/stale_tokens"] > 0) == (s["step"] >= 2)
        if s["step"] >= 2:  # every token is one version behind, and the engine log-probs correct it (TIS)
            assert s["train/stale_tokens"] == s["train/tokens"]
            assert s["train/mismatch_abs_sum"] > 0


def test_sigkill_and_restart_trains_every_step_once_and_books_it_once(runs, engines, tmp_path):
    out = str(tmp_path / "killed")
    run_args = args(out, engines, "rollout.asynchronous=true", "rollout.max_staleness=1", "mismatch.tis=token",
                    "train.checkpoint_every=1")
    proc = subprocess.Popen(sgpo_command(1, run_args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ENV, start_new_session=True)
    latest = os.path.join(out, "checkpoints", "latest")
    try:
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            if os.path.exists(latest) and json.load(open(latest))["step"] >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        signal_tree(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            signal_tree(proc.pid, signal.SIGKILL)
            proc.wait()
    with open(os.path.join(out, "checkpoints", "latest")) as f:
        resumed_from = json.load(f)["step"]
    with open(os.path.join(out, "checkpoints", f"step_{resumed_from}", "state.json")) as f:
        ready = [r["step"] for r in json.load(f)["ready"]]  # made ahead: saved, trained after the restart, not redone
    assert ready in ([resumed_from], [resumed_from, resumed_from + 1])
    sgpo(1, run_args)
    killed, whole = by_step(out), by_step(runs["async1"])
    assert sorted(killed) == sorted(whole) == list(range(1, STEPS + 1))
    for step in whole:
        assert {k: killed[step][k] for k in SAME} == {k: whole[step][k] for k in SAME}, step
        assert killed[step]["train/loss"] == pytest.approx(whole[step]["train/loss"], rel=1e-5, abs=1e-7)
    assert summary(out)["compute"] == summary(runs["async1"])["compute"]  # each generated token booked once


def test_async_guard_drops_whole_groups_older_than_the_bound():
    samples = StepSamples([[1, 2, 3]] * 4, [1] * 4, np.array([0, 0, 1, 1]), np.array([1.0, -1.0, 1.0, -1.0]),
                          engine_logprobs=[[-0.1, -0.2]] * 4, token_versions=[[3, 4], [4, 4], [2, 3], [3, 3]])
    kept, dropped = drop_stale(samples, version=5, max_staleness=2)  # group 1 holds a token of version 2
    assert dropped == 1 and list(kept.group_ids) == [0, 0] and kept.token_versions == [[3, 4], [4, 4]]
    assert drop_stale(samples, version=5, max_staleness=3) == (samples, 0)
    assert drop_stale(samples, version=9, max_staleness=1) == (None, 2)


@pytest.mark.parametrize("override", [
    ["rollout.asynchronous=true"],  # the local engine lives in rank 0
    ["rollout.asynchronous=true", "rollout.engine=serve", "rollout.url=http://x:1"],  # release_memory: colocated
    ["rollout.asynchronous=true", "rollout.engine=serve", "rollout.url=http://x:1", "rollout.release_memory=false",
     "rollout.partial=true"],
])
def test_asynchronous_with_colocated_engines_is_refused(override):
    with pytest.raises(ConfigError, match="config key rollout.asynchronous"):
        load_config(None, override)
