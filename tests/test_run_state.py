"""Run state at scale (megatron dist checkpoints): resume on another layout, kills, damaged files, export,
starting from a megatron checkpoint, and deterministic resumable profiling. Real ``sgpo`` runs on gloo.

The reference run: DP=2 with the distributed optimizer, 6 steps in 2 PPO mini-batches (so losses see the
weights), a checkpoint every 3 steps, and the trained policy exported at the end.
"""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch

from tests.distributed import ENV, read_steps, sgpo, sgpo_command, signal_tree, torchrun

RUN = ["data.size=80", "data.eval_size=0", "profile.k=4", "plan.n_max=8", "plan.order=shuffle", "train.steps=6",
       "train.prompts_per_step=4", "train.mini_batches=2", "train.checkpoint_every=3", "train.eval_every=0",
       "rollout.max_new_tokens=5", "optim.distributed_optimizer=true"]
COMPARED = ("train/grad_norm", "train/pg_loss_sum", "train/ratio_sum")


def train(out, nproc=2, extra=(), expect_ok=True):
    return sgpo(nproc, ["train", f"run.output_dir={out}", *RUN, *extra], expect_ok=expect_ok)


def copy_checkpoint(src_run, dst_run, step):
    """A new run folder holding ``src_run``'s profile and checkpoint ``step`` as its latest."""
    os.makedirs(os.path.join(dst_run, "checkpoints"))
    shutil.copy(os.path.join(src_run, "profile.json"), dst_run)
    shutil.copytree(os.path.join(src_run, "checkpoints", f"step_{step}"),
                    os.path.join(dst_run, "checkpoints", f"step_{step}"))
    with open(os.path.join(dst_run, "checkpoints", "latest"), "w") as f:
        json.dump({"step": step, "dir": f"step_{step}"}, f)


def assert_steps_match(got, want, rel):
    assert [s["step"] for s in got] == [s["step"] for s in want]
    for a, b in zip(got, want):
        assert a["prompts"] == b["prompts"] and a["group_sizes"] == b["group_sizes"]
        for key in COMPARED:
            assert a[key] == pytest.approx(b[key], rel=rel), (a["step"], key)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run_state") / "base")
    train(out, extra=["train.export_hf=true"])
    steps = read_steps(out)
    assert min(s["train/grad_norm"] for s in steps) > 0.1  # every step trains: the Adam state matters
    return out


def test_resume_on_the_same_layout_continues_the_same_trajectory(base, tmp_path):
    resumed = str(tmp_path / "same")
    copy_checkpoint(base, resumed, 3)
    train(resumed)
    assert_steps_match(read_steps(resumed), read_steps(base)[3:], rel=1e-5)


@pytest.mark.parametrize("layout", [["model.parallel.tp=2"], ["model.parallel.pp=2"]], ids=["tp2", "pp2"])
def test_resume_at_another_layout_continues_the_same_trajectory(base, tmp_path, layout):
    resumed = str(tmp_path / "other")
    copy_checkpoint(base, resumed, 3)
    train(resumed, extra=layout)
    assert_steps_match(read_steps(resumed), read_steps(base)[3:], rel=1e-4)


def test_tp2_pp2_checkpoint_resumes_at_dp2(base, tmp_path):
    wide = str(tmp_path / "tp2pp2")
    train(wide, nproc=4, extra=["model.parallel.tp=2", "model.parallel.pp=2", "train.steps=3"])
    resumed = str(tmp_path / "dp2")
    copy_checkpoint(wide, resumed, 3)
    train(resumed)
    assert_steps_match(read_steps(resumed), read_steps(base)[3:], rel=1e-4)


def _kill_during_a_checkpoint_write(out):
    """Start the run; freeze it (SIGSTOP) whenever a ``step_N.tmp`` folder appears and kill it (SIGKILL) if
    the write is still under way; return N."""
    proc = subprocess.Popen(sgpo_command(2, ["train", f"run.output_dir={out}", *RUN, "train.checkpoint_every=1"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    root = os.path.join(out, "checkpoints")
    try:
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            pending = [n for n in (os.listdir(root) if os.path.isdir(root) else []) if n.endswith(".tmp")]
            if pending and int(pending[0][5:-4]) >= 2:
                signal_tree(proc.pid, signal.SIGSTOP)
                if os.path.isdir(os.path.join(root, pending[0])):
                    signal_tree(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return int(pending[0][5:-4])
                signal_tree(proc.pid, signal.SIGCONT)
            time.sleep(0.002)
        raise AssertionError("the run finished before a checkpoint write could be interrupted")
    finally:
        if proc.poll() is None:
            signal_tree(proc.pid, signal.SIGKILL)
            proc.wait()


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(base, tmp_path):
    out = str(tmp_path / "killed")
    step = _kill_during_a_checkpoint_write(out)
    with open(os.path.join(out, "checkpoints", "latest")) as f:
        assert json.load(f)["dir"] == f"step_{step - 1}"
    assert not os.path.exists(os.path.join(out, "checkpoints", f"step_{step}"))
    train(out, extra=["train.checkpoint_every=1"])
    rows = read_steps(out)
    # resumed from step - 1: only the step whose checkpoint was interrupted is done again
    assert [s["step"] for s in rows] == list(range(1, step + 1)) + list(range(step, 7))
    final = {s["step"]: s for s in rows}  # later lines (after the restart) win
    assert_steps_match([final[s] for s in sorted(final)], read_steps(base), rel=1e-5)
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["latest", "step_5", "step_6"]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(base, tmp_path, damage):
    run = str(tmp_path / "damaged")
    copy_checkpoint(base, run, 6)
    dist_dir = os.path.join(run, "checkpoints", "step_6", "dist")
    victim = os.path.join(dist_dir, sorted(n for n in os.listdir(dist_dir) if n.endswith(".distcp"))[0])
    with open(victim, "r+b") as f:
        if damage == "truncate":
            f.truncate(os.path.getsize(victim) // 2)
        else:
            f.seek(os.path.getsize(victim) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
    expected = "truncated" if damage == "truncate" else "corrupted"
    proc = train(run, expect_ok=False)
    assert proc.returncode != 0 and victim in proc.stderr and expected in proc.stderr, proc.stderr[-3000:]
    proc = sgpo(1, ["export", run, str(tmp_path / "hf")], expect_ok=False)
    assert proc.returncode != 0 and victim in proc.stderr and expected in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "hf").exists()


def _hf_logits(folder, tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(tokens).logits


def test_export_equals_the_trainers_policy_in_transformers(base, tmp_path):
    from safetensors.torch import load_file

    from megatron_sgpo.tasks.registry import BUNDLED_POLICY

    exported = str(tmp_path / "export")
    sgpo(2, ["export", base, exported, "--pp", "2", "--no-progress"])
    at_end = load_file(os.path.join(base, "hf", "model.safetensors"))
    cli = load_file(os.path.join(exported, "model.safetensors"))
    assert at_end.keys() == cli.keys() and all(torch.equal(at_end[k], cli[k]) for k in cli)  # step 6 both
    with open(os.path.join(exported, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    tokens = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    tok_file = str(tmp_path / "tokens.pt")
    torch.save(tokens, tok_file)
    dist_dir = os.path.join(base, "checkpoints", "step_6", "dist")
    torchrun("convert_worker.py", 2, ["--tp", "2", "--pp", "1", "--out", str(tmp_path), "--tokens", tok_file,
                                      f"logits:{dist_dir}:trainer:portable"])
    trainer = torch.load(os.path.join(tmp_path, "trainer.pt"), weights_only=True)["logits"]
    got = _hf_logits(exported, tokens)
    assert (got - trainer[..., : got.shape[-1]]).abs().max().item() <= 1e-4
    assert (got - _hf_logits(str(BUNDLED_POLICY), tokens)).abs().max().item() > 1e-2  # training moved it


def test_megatron_path_starts_policy_and_engine_from_those_weights(base, tmp_path):
    """Profiling from a run checkpoint's dist/ (engine synced from the policy) equals profiling from the same
    weights as an HF folder; the policy's weights are those of the checkpoint."""
    profile = ["profile", "data.size=80", "profile.k=4", "train.export_hf=true"]
    from_mg = str(tmp_path / "from_megatron")
    sgpo(1, [*profile, f"run.output_dir={from_mg}",
             f"model.megatron_path={os.path.join(base, 'checkpoints', 'step_6', 'dist')}"])
    from_hf = str(tmp_path / "from_hf")
    sgpo(1, [*profile, f"run.output_dir={from_hf}", f"model.hf_path={os.path.join(base, 'hf')}"])
    with open(os.path.join(from_mg, "profile.json")) as a, open(os.path.join(from_hf, "profile.json")) as b:
        assert json.load(a) == json.load(b)
    with open(os.path.join(from_mg, "profile.json")) as a, open(os.path.join(base, "profile.json")) as b:
        assert json.load(a)["profiles"] != json.load(b)["profiles"]  # not the initial policy's profile
    from safetensors.torch import load_file

    policy, trained = (load_file(os.path.join(d, "hf", "model.safetensors")) for d in (from_mg, base))
    assert all(torch.equal(policy[k], trained[k]) for k in trained)


def test_killed_profiling_resumes_to_the_uninterrupted_profile(tmp_path):
    args = ["profile", "data.size=400", "profile.k=8", "profile.chunk_prompts=16", "rollout.max_new_tokens=5"]
    whole = str(tmp_path / "whole")
    sgpo(1, [*args, f"run.output_dir={whole}"])
    out = str(tmp_path / "killed")
    partial = os.path.join(out, "profile.partial.jsonl")
    proc = subprocess.Popen(sgpo_command(1, [*args, f"run.output_dir={out}"]), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if os.path.exists(partial) and os.path.getsize(partial) and open(partial).read().count("\n") >= 48:
            break
        time.sleep(0.01)
    signal_tree(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(out, "profile.json")), "profiling finished before the kill"
    # as if killed inside a chunk's write: its last rows gone, the row before them torn
    with open(partial) as f:
        lines = f.read().splitlines(keepends=True)
    with open(partial, "w") as f:
        f.writelines(lines[:-5])
        f.write(lines[-5][: len(lines[-5]) // 2])
    sgpo(1, [*args, f"run.output_dir={out}"])
    with open(os.path.join(whole, "profile.json")) as a, open(os.path.join(out, "profile.json")) as b:
        assert json.load(a) == json.load(b)
