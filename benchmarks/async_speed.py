"""Asynchronous RL (rollout.asynchronous, max_staleness 1) against the synchronous loop: steps per minute and
learning curves on the same plan and seeds, in one run.

One `sgpo serve` engine runs in its own process (the bundled arithmetic policy, ``--engine-threads`` threads) and
`sgpo train` (the quickstart's GRPO settings, one rank, ``--train-threads`` threads) trains against it, once per
mode and seed; every run starts by pushing its initial weights, so the engine carries nothing over. Async runs use
token-level TIS on the one-version-stale tokens. Speed: steps per minute of the training loop (rollout wait +
update + sync per step, as logged; evaluations excluded), paired by seed, ratio async/sync. Learning: greedy
accuracy on ``--eval-size`` held-out prompts every ``--eval-every`` steps, mean and 95 % t-interval over seeds;
the async curve is "within" when its mean lies in sync's interval at that step.

Writes OUT/results.md, OUT/results.json and OUT/curves.png; finished runs (with a summary.json) are reused.

    python benchmarks/async_speed.py --seeds 0 1 2 --steps 30 --out runs/bench_async
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODES = {"sync": [], "async": ["rollout.asynchronous=true", "rollout.max_staleness=1", "mismatch.tis=token"]}
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def run(mode: str, seed: int, url: str, args) -> dict:
    out = os.path.join(args.out, f"{mode}-seed{seed}")
    summary = os.path.join(out, "summary.json")
    if not os.path.exists(summary):
        shutil.rmtree(out, ignore_errors=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.train_threads))
        cmd = [sys.executable, "-m", "megatron_sgpo.cli", "quickstart", f"run.output_dir={out}", f"run.seed={seed}",
               "run.mode=grpo", "plan.fixed_n=8", "rollout.engine=serve", f"rollout.url={url}",
               "rollout.release_memory=false", f"rollout.max_new_tokens={args.new_tokens}",
               f"data.eval_size={args.eval_size}", f"train.steps={args.steps}", f"train.eval_every={args.eval_every}",
               "train.checkpoint_every=0", *MODES[mode], *args.overrides]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    with open(summary) as f:
        result = json.load(f)
    with open(os.path.join(out, "steps.jsonl")) as f:
        steps = [json.loads(line) for line in f]
    result["loop_seconds"] = sum(s["time/rollout"] + s["time/train"] + s["time/sync"] for s in steps)
    result["rollout_wait"] = float(np.mean([s["time/rollout"] for s in steps]))
    result["train_seconds"] = float(np.mean([s["time/train"] for s in steps]))
    return result


def interval(values: np.ndarray) -> tuple[float, float]:
    """Mean and 95 % t half-width over seeds (axis 0)."""
    n = values.shape[0]
    half = T95.get(n - 1, 1.96) * values.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(values.shape[1:])
    return values.mean(axis=0), half


def plot(curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, (steps, mean, half) in curves.items():
        line, = ax.plot(steps, mean, marker="o", label=mode)
        ax.fill_between(steps, mean - half, mean + half, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_title("mean and 95 % t-interval over seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--eval-size", type=int, default=500)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=6)
    p.add_argument("--engine-threads", type=int, default=1)
    p.add_argument("--train-threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench_async")
    p.add_argument("overrides", nargs="*", help="extra dotted overrides for every run")
    args = p.parse_args(argv)
    from megatron_sgpo.platform.dist import free_port
    from megatron_sgpo.rollout.launcher import SGLangLauncher
    from megatron_sgpo.tasks.registry import BUNDLED_POLICY

    os.makedirs(args.out, exist_ok=True)
    engine = SGLangLauncher.sgpo(str(BUNDLED_POLICY), free_port(), extra_args=["--threads", str(args.engine_threads)],
                                 log_path=os.path.join(args.out, "engine.log"))
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    with engine.start(timeout_s=300):
        for seed in args.seeds:
            for mode in MODES:
                print(f"{mode} seed {seed}", flush=True)
                results[mode].append(run(mode, seed, engine.url, args))
    speed = {m: np.array([args.steps / r["loop_seconds"] * 60 for r in rs]) for m, rs in results.items()}
    ratios = speed["async"] / speed["sync"]
    lines = ["| seed | sync steps/min | async steps/min | async / sync | sync: rollout, train s/step | "
             "async: rollout wait, train s/step |", "|---|---|---|---|---|---|"]
    for i, seed in enumerate(args.seeds):
        s, a = results["sync"][i], results["async"][i]
        lines.append(f"| {seed} | {speed['sync'][i]:.1f} | {speed['async'][i]:.1f} | {ratios[i]:.2f}× | "
                     f"{s['rollout_wait']:.2f}, {s['train_seconds']:.2f} | {a['rollout_wait']:.2f}, "
                     f"{a['train_seconds']:.2f} |")
    lines.append(f"| mean | {speed['sync'].mean():.1f} | {speed['async'].mean():.1f} | {ratios.mean():.2f}× "
                 f"(min {ratios.min():.2f}×) | | |")
    curves, accs, rows = {}, {}, ["", "| step | sync accuracy (95 % CI) | async accuracy (95 % CI) | async within "
                                      "sync's CI | async − sync, paired by seed (95 % CI) |", "|---|---|---|---|---|"]
    n = min(len(r["evals"]) for runs in results.values() for r in runs)
    for mode, runs in results.items():
        accs[mode] = np.array([[e["accuracy"] for e in r["evals"][:n]] for r in runs])
        curves[mode] = (np.array([e["step"] for e in runs[0]["evals"][:n]]), *interval(accs[mode]))
    (steps, sm, sh), (_, am, ah) = curves["sync"], curves["async"]
    dm, dh = interval(accs["async"] - accs["sync"])
    for k, step in enumerate(steps):
        inside = abs(am[k] - sm[k]) <= sh[k]
        rows.append(f"| {step} | {sm[k]:.3f} ± {sh[k]:.3f} | {am[k]:.3f} ± {ah[k]:.3f} | {'yes' if inside else 'no'} | "
                    f"{dm[k]:+.3f} ± {dh[k]:.3f} |")
    lag_m, lag_h = interval((accs["async"] - accs["sync"])[:, 1:].mean(axis=1, keepdims=True))
    rows.append(f"\nasync − sync averaged over the evaluations after step 0, paired by seed: {lag_m[0]:+.4f} ± "
                f"{lag_h[0]:.4f} (95 % CI)")
    table = "\n".join(lines + rows)
    print(table)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "steps_per_min": {m: v.tolist() for m, v in speed.items()},
                   "ratio": ratios.tolist(), "curves": {m: [c.tolist() for c in v] for m, v in curves.items()}}, f,
                  indent=1)
    plot(curves, os.path.join(args.out, "curves.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
