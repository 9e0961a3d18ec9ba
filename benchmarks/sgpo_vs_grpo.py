"""sGPO against GRPO (n=8) on the same policy, task and seeds: compute to reach GRPO's best accuracy.

Runs ``sgpo train`` twice per seed (run.mode=grpo, then run.mode=sgpo) with evaluation every few
steps, reads each run's ``summary.json`` (evaluations carry the cumulative FLOPs of the ledger,
profiling included) and prints, in one table:
- GRPO's best evaluation accuracy A*, and the compute each method spent to first reach A*;
- the ratio compute(GRPO) / compute(sGPO) (the paper claims about 3);
- both final accuracies.

    python benchmarks/sgpo_vs_grpo.py --seeds 0 1 --steps 30 --out runs/bench
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def run(mode: str, seed: int, args, extra: list[str]) -> dict:
    out = os.path.join(args.out, f"{mode}-seed{seed}")
    summary = os.path.join(out, "summary.json")
    if not os.path.exists(summary):
        cmd = [sys.executable, "-m", "megatron_sgpo.cli", "quickstart", f"run.output_dir={out}", f"run.mode={mode}",
               f"run.seed={seed}", f"data.size={args.prompts}", f"data.eval_size={args.eval_size}",
               f"train.steps={args.steps}", f"train.eval_every={args.eval_every}", f"train.epochs={args.epochs}",
               "train.checkpoint_every=0", f"plan.fixed_n={args.grpo_n}", *extra]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(summary) as f:
        return json.load(f)


def first_reaching(evals: list[dict], target: float) -> float | None:
    """Cumulative FLOPs at the first evaluation with accuracy >= target (None if never)."""
    for e in evals:
        if e["accuracy"] >= target - 1e-12:
            return e["total_flops"]
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--eval-size", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=3)
    p.add_argument("--grpo-n", type=int, default=8)
    p.add_argument("--out", default="runs/sgpo_vs_grpo")
    p.add_argument("overrides", nargs="*", help="extra dotted overrides for both runs")
    args = p.parse_args(argv)
    rows = []
    for seed in args.seeds:
        grpo = run("grpo", seed, args, args.overrides)
        sgpo = run("sgpo", seed, args, args.overrides)
        target = max(e["accuracy"] for e in grpo["evals"])
        g_flops, s_flops = first_reaching(grpo["evals"], target), first_reaching(sgpo["evals"], target)
        rows.append({
            "seed": seed, "grpo_best": target, "grpo_flops_to_best": g_flops, "sgpo_flops_to_grpo_best": s_flops,
            "ratio": (g_flops / s_flops) if s_flops else None,
            "grpo_final": grpo["evals"][-1]["accuracy"], "sgpo_final": sgpo["evals"][-1]["accuracy"],
            "grpo_start": grpo["evals"][0]["accuracy"], "sgpo_best": max(e["accuracy"] for e in sgpo["evals"]),
            "grpo_total_flops": grpo["total_flops"], "sgpo_total_flops": sgpo["total_flops"],
            "sgpo_profiling_flops": sgpo["compute"]["profiling"]["flops"],
        })
    print("| seed | start acc | GRPO best | GRPO FLOPs to best | sGPO FLOPs to GRPO best | ratio | GRPO final | sGPO final | sGPO best |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = f"{r['sgpo_flops_to_grpo_best']:.3g}" if r["sgpo_flops_to_grpo_best"] else "not reached"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else "-"
        print(f"| {r['seed']} | {r['grpo_start']:.3f} | {r['grpo_best']:.3f} | {r['grpo_flops_to_best']:.3g} | {s} | "
              f"{ratio} | {r['grpo_final']:.3f} | {r['sgpo_final']:.3f} | {r['sgpo_best']:.3f} |")
    with open(os.path.join(args.out, "sgpo_vs_grpo.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
