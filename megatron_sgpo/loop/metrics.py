"""What a run records: per-step statistics, TensorBoard scalars, steps.jsonl, and the end-of-run report."""
from __future__ import annotations

import json
import os

import numpy as np

from megatron_sgpo.algo.refill import informative


def rollout_stats(groups, group_sizes: list[int]) -> dict:
    """Rewards, pass rates (overall and per difficulty level), group sizes and the share of informative groups
    (rewards not all equal, so a non-zero advantage) of one step's rollouts."""
    rewards = np.array([r for g in groups for r in g.rewards])
    stats = {"reward_mean": float(rewards.mean()), "accuracy": float((rewards >= 1.0).mean()),
             "samples": len(rewards), "group_sizes": group_sizes, "prompts": [g.item.id for g in groups],
             "rollout/informative_groups": float(np.mean([informative(g) for g in groups]))}
    for level in sorted({g.item.meta.get("level") for g in groups} - {None}):
        lv = [r for g in groups if g.item.meta.get("level") == level for r in g.rewards]
        stats[f"pass_rate/level{level}"] = float(np.mean([r >= 1.0 for r in lv]))
    versions = {c.weight_version for g in groups for c in g.completions} - {None}
    if versions:  # the engine's weight version the step sampled from (the oldest, if several)
        stats["rollout/weight_version"] = min(versions)
    return stats


class RunLog:
    """TensorBoard scalars and one JSON line per step in ``steps.jsonl`` (what ran, for audits and tests).

    Only global rank 0 writes; on other ranks every method does nothing.
    """

    def __init__(self, out_dir: str, enabled: bool):
        self.out_dir, self.writer = out_dir, None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(out_dir, "tb"))

    def step(self, step: int, stats: dict, ledger) -> None:
        if self.writer is None:
            return
        with open(os.path.join(self.out_dir, "steps.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, **stats}) + "\n")
        for key, value in stats.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)
        if stats.get("group_sizes"):
            self.writer.add_histogram("group_size", np.array(stats["group_sizes"]), step)
        for phase, tot in ledger.phase_totals().items():
            self.writer.add_scalar(f"compute/{phase}_flops", tot["flops"], step)
            self.writer.add_scalar(f"compute/{phase}_tokens", tot["tokens"], step)
        self.writer.add_scalar("compute/total_flops", ledger.total_flops, step)

    def evaluation(self, step: int, result: dict) -> None:
        if self.writer is not None:
            for key, value in result.items():
                self.writer.add_scalar(f"eval/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def report(summary: dict, out_dir: str) -> str:
    """The end-of-run summary a person reads: accuracy over the run and compute by phase."""
    lines = [f"{summary['mode']}: {summary['steps']} steps, outputs in {out_dir}"]
    for e in summary["evals"]:
        levels = " ".join(f"L{k[len('accuracy_level'):]}={v:.2f}" for k, v in e.items()
                          if k.startswith("accuracy_level"))
        lines.append(f"  accuracy {e['tag']:>8} (step {e['step']:>3}): {e['accuracy']:.3f}  {levels}")
    total = summary["total_flops"] or 1
    for phase, v in summary["compute"].items():
        share = 100 * v["flops"] / total
        lines.append(f"  compute {phase:>9}: {v['flops']:.3g} FLOPs ({share:4.1f}%), {v['tokens']} tokens")
    lines.append(f"  compute     total: {summary['total_flops']:.3g} FLOPs")
    return "\n".join(lines)
