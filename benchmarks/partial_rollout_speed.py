"""Rollout-phase throughput with and without partial rollouts (APRIL), on the same prompt stream, in one run,
against the real SGLang 0.5.23 CPU server (continuous batching).

Task: a random tiny Llama whose only stop is its EOS token, so response lengths are geometric (mean ≈ vocabulary
size) and capped at --new-tokens: a long tail. Each of --steps steps needs --groups groups of --n samples:
- baseline: the step's groups are generated whole (`SGLangClient.generate`), the step ends with its longest sample;
- APRIL: `PartialRollouts.run` starts the carried groups plus new ones up to --over × groups, returns the first
  --groups complete groups and carries the rest; between steps the engine's weight version is advanced, as a
  trainer's sync would, so recycled tokens show up as off-policy.
Throughput = tokens of the returned groups / rollout wall time. Also printed: the mean length of returned
samples (APRIL prefers short groups: a bias the loss does not see), the share of returned tokens made under an
older weight version, and the tokens generated but still unfinished at the end (counted, not returned).

    python benchmarks/partial_rollout_speed.py [--steps 4] [--groups 8] [--n 4] [--new-tokens 1024] [--over 1.5]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PYTHON = os.environ.get("SGPO_SGLANG_PYTHON", os.path.join(ROOT, ".venv-sglang", "bin", "python"))
SHIMS = os.path.join(ROOT, "tests", "engines", "sglang_shims")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=1024)
    p.add_argument("--over", type=float, default=1.5, help="groups in flight per step, as a multiple of --groups")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def stream(a, count):
    rng = np.random.default_rng(a.seed)
    return [(f"p{i}", [1] + rng.integers(3, 200, 7).tolist(), a.n) for i in range(count)]


def baseline(client, prompts, a, params):
    t0, tokens, lengths = time.perf_counter(), 0, []
    for s in range(a.steps):
        step = prompts[s * a.groups:(s + 1) * a.groups]
        out = client.generate([p for _, p, _ in step], [n for _, _, n in step], params)
        lengths += [len(c.token_ids) for g in out for c in g]
    tokens = sum(lengths)
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, "generated": tokens, "lengths": lengths,
            "stale": 0}


def april(client, prompts, a, params):
    from megatron_sgpo.rollout.partial import PartialRollouts

    rollouts, queue = PartialRollouts(client), list(prompts)
    in_flight = math.ceil(a.over * a.groups)
    t0, lengths, stale = time.perf_counter(), [], 0
    try:
        for s in range(a.steps):
            fresh = [queue.pop(0) for _ in range(max(0, in_flight - len(rollouts.carried)))]
            out = rollouts.run(fresh, a.groups, params)
            for group in out.values():
                for c in group:
                    lengths.append(len(c.token_ids))
                    stale += sum(v < s for v in c.extra["token_versions"])
            client.request("POST", "/update_weight_version", {"new_version": str(s + 1),
                                                               "abort_all_requests": False})
        return {"seconds": time.perf_counter() - t0, "tokens": sum(lengths), "generated": rollouts.generated_tokens,
                "lengths": lengths, "stale": stale}
    finally:
        rollouts.close()


def main(argv=None) -> int:
    a = parse(argv)
    from megatron_sgpo.platform.dist import free_port
    from megatron_sgpo.rollout.engine import SamplingParams
    from megatron_sgpo.rollout.launcher import SGLangLauncher
    from megatron_sgpo.rollout.sglang import SGLangClient
    from tests.rollout.helpers import build_tiny_model

    params = SamplingParams(temperature=1.0, max_new_tokens=a.new_tokens)
    prompts = stream(a, a.steps * math.ceil(a.over * a.groups))
    with tempfile.TemporaryDirectory(prefix="april-") as tmp:
        model = build_tiny_model(tmp, eos_token="</s>")
        launcher = SGLangLauncher.sglang(model, free_port(), device="cpu", max_total_tokens=65536, python=PYTHON,
                                         env={"PYTHONPATH": SHIMS, "OMP_NUM_THREADS": "1"}).start(timeout_s=300)
        client = SGLangClient(launcher.url, launcher=launcher, max_concurrency=128, timeout_s=900)
        try:
            client.generate([prompts[0][1]], [1], SamplingParams(max_new_tokens=8))  # warm-up
            results = {"baseline": baseline(client, prompts, a, params), "april": april(client, prompts, a, params)}
        finally:
            client.close()
            launcher.stop()
    print(f"{a.steps} steps x {a.groups} groups x n={a.n}, max {a.new_tokens} new tokens, APRIL in flight "
          f"{math.ceil(a.over * a.groups)} groups; SGLang 0.5.23 CPU, one thread")
    print("| mode | rollout s | returned tokens | tokens/s | vs baseline | mean length | off-policy tokens | "
          "generated, not returned |")
    print("|---|---|---|---|---|---|---|---|")
    base = results["baseline"]["tokens"] / results["baseline"]["seconds"]
    for mode, r in results.items():
        rate = r["tokens"] / r["seconds"]
        stale, unreturned = r["stale"] / max(r["tokens"], 1), r["generated"] - r["tokens"]
        print(f"| {mode} | {r['seconds']:.1f} | {r['tokens']} | {rate:.0f} | {rate / base:.2f}× | "
              f"{np.mean(r['lengths']):.0f} | {stale:.1%} | {unreturned} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
