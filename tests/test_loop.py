"""The full loop on CPU: bundled policy, local engine, real megatron model at DP=2 (gloo).

Checks the invariants of an sGPO run: each group's size equals its plan, filtered prompts never
appear, the order follows the curriculum, ledger totals equal the sum of their parts, and a run
resumed from a checkpoint reproduces the losses of the uninterrupted run.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from megatron_sgpo.loop import checkpoint
from megatron_sgpo.tasks.registry import BUNDLED_POLICY
from tests.distributed import ENV, read_steps, sgpo, sgpo_command, signal_tree

BASE = ["data.size=50", "data.eval_size=10", "profile.k=4", "plan.n_max=8", "train.steps=4",
        "train.prompts_per_step=3", "train.checkpoint_every=2", "train.eval_every=0", "rollout.max_new_tokens=5"]


def sgpo_train(out_dir, nproc=2, extra=()):
    return sgpo(nproc, ["train", f"run.output_dir={out_dir}", *BASE, *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("loop") / "run")
    sgpo_train(out)
    return out


def test_groups_follow_the_plan_filter_and_curriculum(run):
    with open(os.path.join(run, "profile.json")) as f:
        profiles = {p["prompt_id"]: p for p in json.load(f)["profiles"]}
    p_hat = {pid: p["successes"] / p["samples"] for pid, p in profiles.items()}
    steps = read_steps(run)
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    order = [pid for s in steps for pid in s["prompts"]]
    assert all(p_hat[pid] < 1.0 for pid in order), "a p=1 prompt was trained on"
    kept = [p_hat[pid] for pid in order]
    zero = [pid for pid in order if p_hat[pid] == 0]
    assert kept == sorted(kept, reverse=True), "prompts are not ordered easy to hard"
    for s in steps:
        for pid, n in zip(s["prompts"], s["group_sizes"]):
            expect = 8 if p_hat[pid] == 0 else min(max(-(-4 // profiles[pid]["successes"]), 2), 8)
            assert n == expect, (pid, p_hat[pid], n)
        assert s["samples"] == sum(s["group_sizes"])
    assert len(zero) <= max(1, round(0.1 * sum(1 for v in p_hat.values() if v == 0)))


def test_ledger_totals_equal_sum_of_parts(run):
    with open(os.path.join(run, "summary.json")) as f:
        summary = json.load(f)
    compute = summary["compute"]
    assert summary["total_flops"] == pytest.approx(sum(v["flops"] for v in compute.values()), rel=1e-12)
    assert compute["profiling"]["flops"] > 0 and compute["rollout"]["flops"] > 0 and compute["training"]["flops"] > 0
    assert compute["training"]["flops"] == pytest.approx(3 * compute["logprob"]["flops"], rel=1e-9)


def test_resume_from_checkpoint_reproduces_losses(run, tmp_path):
    resumed = str(tmp_path / "resumed")
    os.makedirs(os.path.join(resumed, "checkpoints"))
    shutil.copy(os.path.join(run, "profile.json"), resumed)
    shutil.copytree(os.path.join(run, "checkpoints", "step_2"), os.path.join(resumed, "checkpoints", "step_2"))
    with open(os.path.join(resumed, "checkpoints", "latest"), "w") as f:
        json.dump({"step": 2, "dir": "step_2"}, f)
    sgpo_train(resumed)
    first, again = read_steps(run), read_steps(resumed)
    assert [s["step"] for s in again] == [3, 4]
    for a, b in zip(first[2:], again):
        assert a["prompts"] == b["prompts"] and a["group_sizes"] == b["group_sizes"]
        assert b["train/pg_loss_sum"] == pytest.approx(a["train/pg_loss_sum"], abs=1e-6)
        assert b["reward_mean"] == a["reward_mean"]
        # the loss at ratio 1 does not see the weights; the gradient norm does (model + Adam state restored)
        assert b["train/grad_norm"] == pytest.approx(a["train/grad_norm"], rel=1e-6)


def test_sigkill_and_restart_reproduces_the_uninterrupted_run(run, tmp_path):
    """Kill -9 the whole torchrun job after its first checkpoint, restart it, compare with ``run``."""
    import signal
    import time

    out = str(tmp_path / "killed")
    proc = subprocess.Popen(sgpo_command(2, ["train", f"run.output_dir={out}", *BASE]), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    latest = os.path.join(out, "checkpoints", "latest")
    deadline = time.time() + 600
    while not os.path.exists(latest) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    signal_tree(proc.pid, signal.SIGKILL)
    proc.wait()
    assert os.path.exists(latest), "the run never wrote a checkpoint"
    sgpo_train(out)
    final = {s["step"]: s for s in read_steps(out)}  # later lines (after the restart) win
    reference = {s["step"]: s for s in read_steps(run)}
    assert sorted(final) == [1, 2, 3, 4]
    for step in (3, 4):
        assert final[step]["prompts"] == reference[step]["prompts"]
        assert final[step]["train/pg_loss_sum"] == pytest.approx(reference[step]["train/pg_loss_sum"], abs=1e-6)
        assert final[step]["train/grad_norm"] == pytest.approx(reference[step]["train/grad_norm"], rel=1e-6)


def test_dataset_row_without_answer_fails_before_any_compute(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q: 1+1=\\nA:", "answer": "2"}\n{"prompt": "Q: 2+2=\\nA:"}\n')
    proc = subprocess.run([sys.executable, "-m", "megatron_sgpo.cli", "train", "data.task=jsonl",
                           f"data.train_file={bad}", "data.verifier=arith", f"model.hf_path={BUNDLED_POLICY}",
                           f"run.output_dir={tmp_path / 'out'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert f"{bad}:2: row has no 'answer' field" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_online_posteriors_replan_group_sizes(tmp_path):
    """With online posteriors, a prompt's next appearance is sized from its updated posterior."""
    out = str(tmp_path / "online")
    sgpo_train(out, nproc=1, extra=["online.enabled=true", "online.reprofile_every=2", "train.epochs=2",
                                    "train.steps=8", "data.size=30"])
    with open(os.path.join(out, "profile.json")) as f:
        p_hat = {p["prompt_id"]: p["successes"] / p["samples"] for p in json.load(f)["profiles"]}
    with open(os.path.join(checkpoint.find(out), "state.json")) as f:
        state = json.load(f)
    post = {pid: (a, b) for pid, a, b in state["posteriors"]["posteriors"]}
    steps = read_steps(out)
    seen, replanned = set(), 0
    for s in steps:
        for pid, n in zip(s["prompts"], s["group_sizes"]):
            if pid in seen:
                replanned += 1
            seen.add(pid)
    assert replanned > 0, "no prompt appeared twice"
    # posteriors absorbed the training and re-profiling rewards: pseudo-counts exceed the profile's k + prior
    assert any(a + b > 4 + 2 for a, b in post.values())
    assert set(state["seen"]) <= set(p_hat)


def test_grpo_baseline_has_fixed_groups_and_no_profiling(tmp_path):
    out = str(tmp_path / "grpo")
    sgpo_train(out, nproc=1, extra=["run.mode=grpo", "plan.fixed_n=4", "train.steps=2"])
    assert not os.path.exists(os.path.join(out, "profile.json"))
    steps = read_steps(out)
    assert all(n == 4 for s in steps for n in s["group_sizes"])
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["compute"]["profiling"]["flops"] == 0


def test_dapo_with_cost_aware_selection_trains_the_drawn_samples(tmp_path):
    out = str(tmp_path / "dapo")
    sgpo_train(out, nproc=1, extra=["run.mode=dapo", "plan.fixed_n=4", "train.steps=3", "selection.cost_aware=true",
                                    "selection.cost_aware_draws=5"])
    for s in read_steps(out):
        # groups with all-equal rewards are dropped first; then exactly 5 draws if anything is left
        assert s["trained_samples"] in (0, 5)
        if s["trained_samples"]:
            assert s["train/seqs"] == 5


def test_grsp_penalty_changes_advantages_only_when_on(tmp_path):
    """GRSP (target=reward) shapes rewards within groups: same rollouts, different losses; off by default."""
    runs = {}
    grsp = ["grsp.coef=0.5", "grsp.target=reward", "grsp.logprob_threshold=-0.5"]
    for name, extra in {"off": [], "on": grsp}.items():
        out = str(tmp_path / name)
        sgpo_train(out, nproc=1, extra=["run.mode=grpo", "plan.fixed_n=4", "train.steps=1", *extra])
        runs[name] = read_steps(out)[0]
    assert runs["on"]["prompts"] == runs["off"]["prompts"] and runs["on"]["reward_mean"] == runs["off"]["reward_mean"]
    assert runs["on"]["train/pg_loss_sum"] != pytest.approx(runs["off"]["train/pg_loss_sum"], abs=1e-9)


def test_verifier_failing_on_every_item_stops_all_ranks_with_a_clear_error(tmp_path):
    """The gym verifier cannot score plain JSONL items: rank 0's rollout fails, every rank stops (no hang)."""
    data = tmp_path / "plain.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q: {i}+1=\nA:", "answer": str(i + 1)}) + "\n" for i in range(8)))
    out = tmp_path / "out"
    proc = sgpo(2, ["train", f"run.output_dir={out}", "run.mode=grpo", "plan.fixed_n=2", "data.task=jsonl",
                    f"data.train_file={data}", "data.verifier=gym", f"model.hf_path={BUNDLED_POLICY}", "train.steps=1"],
                expect_ok=False, timeout=300)
    assert proc.returncode != 0
    assert "rollout of step 1 failed: VerifierFailure" in proc.stderr
    assert (out / "config.yaml").exists()  # the run's outputs were not removed


def test_dapo_refill_trains_a_full_step_of_informative_groups_and_books_every_rollout(tmp_path):
    """DAPO dynamic sampling: extra prompts are generated until each step holds prompts_per_step groups with
    unequal rewards; every generated group is logged (and booked), and the trained samples are exactly those
    groups' rollouts."""
    out = str(tmp_path / "refill")
    sgpo_train(out, nproc=1, extra=["run.mode=dapo", "selection.refill=true", "plan.fixed_n=4",
                                    "train.checkpoint_every=0"])
    steps = read_steps(out)
    assert len(steps) == 4 and any(s["refill/rounds"] > 0 for s in steps), "no step needed a refill"
    for s in steps:
        assert s["refill/generated_groups"] == len(s["prompts"]) == len(set(s["prompts"])) >= 3
        assert s["samples"] == sum(s["group_sizes"]) == 4 * len(s["prompts"])
        assert s["trained_samples"] == 4 * (3 - s["refill/short"])
        informative, found = round(s["rollout/informative_groups"] * len(s["prompts"])), 3 - s["refill/short"]
        assert informative >= found and (s["refill/short"] == 0 or informative == found)
    with open(os.path.join(out, "summary.json")) as f:
        rollout = json.load(f)["compute"]["rollout"]
    assert rollout["tokens"] == sum(s["rollout/tokens"] for s in steps)  # the ledger booked every generated group
    assert all(s["rollout/tokens"] > s["samples"] * 5 for s in steps)  # prompt + response tokens of each sample


def test_sequential_profiling_and_budgeted_allocation_run_end_to_end(tmp_path):
    """profile.sequential stops clear prompts before k; plan.allocation=budgeted keeps every step within its
    rollout budget, with online posteriors re-sizing prompts as they are seen again."""
    out = str(tmp_path / "seq")
    sgpo_train(out, nproc=1, extra=["profile.k=8", "profile.sequential=true", "plan.allocation=budgeted",
                                    "plan.step_rollout_budget=12", "online.enabled=true", "train.epochs=2",
                                    "train.steps=6", "data.size=12", "train.checkpoint_every=0"])
    with open(os.path.join(out, "profile.json")) as f:
        samples = [p["samples"] for p in json.load(f)["profiles"]]
    assert max(samples) <= 8 and min(samples) < 8, samples
    steps = read_steps(out)
    assert len(steps) >= 4 and all(sum(s["group_sizes"]) <= 12 for s in steps)
    assert any(sum(s["group_sizes"]) == 12 for s in steps)
