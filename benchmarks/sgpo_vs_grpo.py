"""sGPO and its variants against the baselines users would pick, on several seeds, as a reviewer would measure it.

Every (method, seed) is one `sgpo quickstart` run (a task with a bundled policy: ``--task arith`` or ``signed``)
with the method's overrides and a greedy evaluation every ``--eval-every`` steps on ``--eval-size`` held-out
prompts. Protocol:

- Reference: GRPO with n = 8 (``grpo_n8``). Its plateau is the mean over seeds of its last third of evaluations;
  the rule "GRPO has plateaued" holds when that mean is no more than one standard error above the previous
  third's: GRPO no longer improves. A curve that falls after its peak has plateaued too, and its plateau then lies
  below the peak (the script prints whether the rule held; if not, run longer).
- Gain G = plateau - start accuracy (the mean of every run's step-0 evaluation). For each fraction f (50/75/90/95 %)
  a run reaches start + f G at the first evaluation whose centred 3-point moving average of accuracy does (one
  lucky evaluation is not enough); its compute is the ledger's FLOPs there (profiling, rollouts, log-prob and
  training passes, refills; evaluation excluded and reported apart).
- Ratio = reference compute / method compute, paired by seed; mean over seeds with a bootstrap 95 % interval
  (seeds resampled, ratio of means, 10 000 draws). A method that misses a threshold on some seed is reported as
  reaching it on k/N seeds, without a ratio.

Writes ``OUT/results.md`` (the table), ``OUT/results.json`` and ``OUT/curves.png`` (accuracy against compute,
mean and range across seeds, every method). Finished runs (those with a summary.json) are not rerun; an
unfinished one starts over. ``--jobs N`` runs N at a time, each with cpu_count / N threads.

    python benchmarks/sgpo_vs_grpo.py --seeds 0 1 2 3 4 --steps 150 --out runs/sgpo_vs_grpo
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

REFERENCE = "grpo_n8"
METHODS: dict[str, list[str]] = {
    "grpo_n4": ["run.mode=grpo", "plan.fixed_n=4"],
    "grpo_n8": ["run.mode=grpo", "plan.fixed_n=8"],
    "grpo_n16": ["run.mode=grpo", "plan.fixed_n=16"],
    "dapo_refill": ["run.mode=dapo", "plan.fixed_n=8", "selection.refill=true"],
    "sgpo": ["run.mode=sgpo"],
    "sgpo_online": ["run.mode=sgpo", "online.enabled=true", "online.reprofile_every=10"],
    "sgpo_online_cost": ["run.mode=sgpo", "online.enabled=true", "online.reprofile_every=10",
                         "selection.cost_aware=true"],
    "sgpo_sequential": ["run.mode=sgpo", "profile.sequential=true"],
    "sgpo_budgeted": ["run.mode=sgpo", "plan.allocation=budgeted", "plan.step_rollout_budget=64"],
}
FRACTIONS = (0.5, 0.75, 0.9, 0.95)


def run(method: str, seed: int, args) -> dict:
    out = os.path.join(args.out, f"{method}-seed{seed}")
    summary = os.path.join(out, "summary.json")
    if not os.path.exists(summary):
        shutil.rmtree(out, ignore_errors=True)  # an unfinished run (killed benchmark) starts over
        cmd = [sys.executable, "-m", "megatron_sgpo.cli", "quickstart", f"run.output_dir={out}", f"run.seed={seed}",
               f"data.task={args.task}", f"data.size={args.prompts}", f"data.eval_size={args.eval_size}",
               f"train.steps={args.steps}", f"train.epochs={args.epochs}", f"train.eval_every={args.eval_every}",
               "train.checkpoint_every=0", *METHODS[method], *args.overrides]
        print(f"{method} seed {seed}", flush=True)
        threads = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.jobs))} if args.jobs > 1 else {}
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, **threads})
    with open(summary) as f:
        return json.load(f)


def smoothed(evals: list[dict]) -> np.ndarray:
    """Centred 3-point moving average of accuracy (the ends average over the points they have)."""
    acc = np.array([e["accuracy"] for e in evals])
    return np.array([acc[max(i - 1, 0): i + 2].mean() for i in range(len(acc))])


def compute_to_reach(evals: list[dict], target: float) -> float | None:
    for e, a in zip(evals, smoothed(evals)):
        if a >= target - 1e-12:
            return e["total_flops"]
    return None


def plateau(ref_runs: list[dict]) -> tuple[float, bool]:
    """Mean accuracy of GRPO's last third of evaluations over seeds, and whether it no longer rises (module doc)."""
    curves = np.array([[e["accuracy"] for e in r["evals"]] for r in ref_runs])
    third = max(curves.shape[1] // 3, 1)
    last, before = curves[:, -third:].ravel(), curves[:, -2 * third: -third].ravel()
    stderr = last.std(ddof=1) / np.sqrt(last.size) if last.size > 1 else float("inf")
    return float(last.mean()), bool(before.size and last.mean() - before.mean() <= stderr)


def bootstrap_ratio(ref: np.ndarray, other: np.ndarray, draws: int = 10_000, seed: int = 0) -> tuple:
    """Mean of per-seed ratios ref/other and the 95 % interval of the ratio of means over resampled seeds."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ref), (draws, len(ref)))
    ratios = ref[idx].mean(axis=1) / other[idx].mean(axis=1)
    return float(np.mean(ref / other)), float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def analyse(results: dict[str, list[dict]], eval_size: int) -> dict:
    start = float(np.mean([r["evals"][0]["accuracy"] for runs in results.values() for r in runs]))
    top, flat = plateau(results[REFERENCE])
    gain = top - start
    table = {}
    for method, runs in results.items():
        row = {"final": [r["evals"][-1]["accuracy"] for r in runs], "total_flops": [r["total_flops"] for r in runs],
               "eval_flops": [sum(e.get("eval_flops", 0.0) for e in r["evals"]) for r in runs]}
        for f in FRACTIONS:
            target = start + f * gain
            ref = [compute_to_reach(r["evals"], target) for r in results[REFERENCE]]
            mine = [compute_to_reach(r["evals"], target) for r in runs]
            ok = [i for i, (a, b) in enumerate(zip(ref, mine)) if a is not None and b is not None]
            cell = {"reached": sum(m is not None for m in mine), "seeds": len(runs)}
            if len(ok) == len(runs):
                cell["ratio"] = bootstrap_ratio(np.array([ref[i] for i in ok]), np.array([mine[i] for i in ok]))
                cell["flops"] = float(np.mean(mine))
            row[f"{round(f * 100)}%"] = cell
        table[method] = row
    return {"start": start, "plateau": top, "plateau_rule_holds": flat, "gain": gain,
            "eval_stderr": float(np.sqrt(max(top * (1 - top), 1e-9) / eval_size)), "methods": table}


def markdown(a: dict) -> str:
    heads = [f"{round(f * 100)}%" for f in FRACTIONS]
    lines = [f"start accuracy {a['start']:.3f}, GRPO n=8 plateau {a['plateau']:.3f} (gain {a['gain']:+.3f}; "
             f"plateau rule {'holds' if a['plateau_rule_holds'] else 'does NOT hold: run longer'}; evaluation "
             f"standard error {a['eval_stderr']:.3f})", "",
             "| method | " + " | ".join(f"ratio to {h} of gain" for h in heads) + " | final accuracy | total FLOPs | "
             "evaluation FLOPs |", "|---" * (len(heads) + 4) + "|"]
    for method, row in a["methods"].items():
        cells = []
        for h in heads:
            c = row[h]
            cells.append(f"{c['ratio'][0]:.2f}× [{c['ratio'][1]:.2f}, {c['ratio'][2]:.2f}]" if "ratio" in c
                         else f"reached {c['reached']}/{c['seeds']}")
        final = np.array(row["final"])
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {final.mean():.3f} ± {final.std():.3f} | "
                     f"{np.mean(row['total_flops']):.3g} | {np.mean(row['eval_flops']):.3g} |")
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], path: str, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for method, runs in results.items():
        n = min(len(r["evals"]) for r in runs)
        flops = np.array([[e["total_flops"] for e in r["evals"][:n]] for r in runs]).mean(axis=0)
        acc = np.array([smoothed(r["evals"][:n]) for r in runs])
        line, = ax.plot(flops, acc.mean(axis=0), label=method, lw=2 if method.startswith("sgpo") else 1.2)
        ax.fill_between(flops, acc.min(axis=0), acc.max(axis=0), color=line.get_color(), alpha=0.12)
    ax.set_xlabel("training compute, FLOPs (profiling included, evaluation excluded)")
    ax.set_ylabel("held-out greedy accuracy (3-point moving average)")
    ax.set_title(f"{task}: mean and range over {len(next(iter(results.values())))} seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="arith", choices=["arith", "signed"], help="a task with a bundled policy")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--prompts", type=int, default=400)
    p.add_argument("--eval-size", type=int, default=2500)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--out", default="runs/sgpo_vs_grpo")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each with cpu_count / jobs threads")
    p.add_argument("overrides", nargs="*", help="extra dotted overrides for every run")
    args = p.parse_args(argv)
    methods = list(dict.fromkeys([REFERENCE, *args.methods]))
    os.makedirs(args.out, exist_ok=True)
    pairs = [(method, seed) for method in methods for seed in args.seeds]
    with ThreadPoolExecutor(max(args.jobs, 1)) as pool:
        done = dict(zip(pairs, pool.map(lambda pair: run(*pair, args), pairs)))
    results = {method: [done[method, seed] for seed in args.seeds] for method in methods}
    analysis = analyse(results, args.eval_size)
    text = markdown(analysis)
    print(text)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"`python benchmarks/sgpo_vs_grpo.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
                f"{text}\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(analysis, f, indent=1)
    plot(results, os.path.join(args.out, "curves.png"), args.task)
    return 0


if __name__ == "__main__":
    sys.exit(main())
