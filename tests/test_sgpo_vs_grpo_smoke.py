"""Smoke test of the sGPO-vs-baselines benchmark (benchmarks/sgpo_vs_grpo.py): 2 seeds x 3 steps of three
methods on the second task (`signed`); the full protocol (5 seeds, plateaued GRPO) is far too long for the test
suite."""
import json
import os

import numpy as np
import pytest
import yaml

from benchmarks import sgpo_vs_grpo


def test_benchmark_runs_resumes_and_reports_every_method(tmp_path):
    out = str(tmp_path / "bench")
    argv = ["--task", "signed", "--seeds", "0", "1", "--methods", "dapo_refill", "sgpo_budgeted", "--steps", "3",
            "--epochs", "1", "--jobs", "2", "--prompts", "40", "--eval-size", "30", "--eval-every", "1", "--out", out]
    assert sgpo_vs_grpo.main(argv) == 0
    analysis = json.load(open(os.path.join(out, "results.json")))
    assert set(analysis["methods"]) == {"grpo_n8", "dapo_refill", "sgpo_budgeted"}
    for row in analysis["methods"].values():
        assert len(row["final"]) == 2 and all(f > 0 for f in row["eval_flops"])
        for cell in (row[k] for k in ("50%", "75%", "90%", "95%")):
            assert 0 <= cell["reached"] <= 2 and ("ratio" not in cell or cell["ratio"][1] <= cell["ratio"][2])
    assert os.path.getsize(os.path.join(out, "curves.png")) > 10_000
    assert "| sgpo_budgeted |" in open(os.path.join(out, "results.md")).read()
    config = yaml.safe_load(open(os.path.join(out, "sgpo_budgeted-seed1", "config.yaml")))
    assert config["data"]["task"] == "signed" and config["run"]["seed"] == 1
    stamp = os.path.getmtime(os.path.join(out, "grpo_n8-seed0", "summary.json"))
    assert sgpo_vs_grpo.main(argv) == 0  # resumes: finished runs are read back, not rerun
    assert os.path.getmtime(os.path.join(out, "grpo_n8-seed0", "summary.json")) == stamp


def test_bootstrap_interval_and_moving_average_on_hand_made_numbers():
    ref, other = np.array([4.0, 4.0, 4.0]), np.array([2.0, 2.0, 2.0])
    assert sgpo_vs_grpo.bootstrap_ratio(ref, other) == (2.0, 2.0, 2.0)
    accs = [0.1, 0.1, 0.9, 0.1, 0.5, 0.6, 0.7]
    evals = [{"accuracy": a, "total_flops": i + 1} for i, a in enumerate(accs)]
    # one lucky evaluation (0.9 at 3 FLOPs) does not count: the moving average first reaches 0.55 at 6 FLOPs
    assert sgpo_vs_grpo.compute_to_reach(evals, 0.55) == 6


def test_plateau_rule_holds_on_flat_and_falling_curves_and_not_on_rising_ones():
    def runs(curve):
        noise = [0.0, 0.002, -0.002]  # three seeds, so the last third has a standard error
        return [{"evals": [{"accuracy": a + d} for a in curve]} for d in noise]

    flat, rising, falling = [0.5] * 9, [0.1 * i for i in range(9)], [0.9 - 0.05 * i for i in range(9)]
    assert sgpo_vs_grpo.plateau(runs(flat)) == (pytest.approx(0.5), True)
    assert sgpo_vs_grpo.plateau(runs(rising))[1] is False
    top, holds = sgpo_vs_grpo.plateau(runs(falling))
    assert holds and top == pytest.approx(np.mean(falling[-3:]))  # below the peak: the mean of the last third
