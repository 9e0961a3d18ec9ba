"""The prepared GPU check: one command of at most ~8 minutes on a machine with one CUDA GPU.

Run from the repository root on the GPU machine, after the carried wheels are installed
(``bash tools/gpu_check.sh OUT_DIR`` does both; docs/benchmarks.md, "GPU check", says how to carry them):
 1. environment: GPU, torch/CUDA, megatron-core, Transformer Engine, transformers;
 2. the ``gpu``-marked tests (tests/gpu): megatron bf16 on one GPU with NCCL against transformers, a bf16 RL
    step and the weight sync into the local engine on CUDA, the local engine's log-probs, TE when importable;
 3. tools/benchmark_throughput.py on a 1.1B Llama-shaped model in bf16: training step (MFU against the
    datasheet peak), log-prob pass, weight sync against a device copy, rollout; peak GPU memory per phase
    beside the cluster planner's prediction for the same model and layout;
 4. benchmarks/weight_transport.py on CUDA: tensor handles (CUDA IPC; one flat buffer per bucket, and one handle
    per tensor as its baseline) and the gloo broadcast into a separate engine process, against a device copy
    of the same bytes.
Every step is a subprocess with its own time limit; results are written after each step, so a killed run
still leaves gpu_check.json and gpu_check.md in --out. Without CUDA it prints one line and exits 0;
``--cpu-dry-run`` runs every step's command on the CPU with a tiny model instead (tests/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (model, training workload) flags: a 1.1B Llama-shaped model at 2048 tokens on the GPU; a tiny one for the
# CPU dry run, which runs every step's command exactly as on the GPU otherwise
GPU_SCALE = (["--hidden", "2048", "--layers", "16", "--heads", "32", "--kv-heads", "8", "--ffn", "8192",
              "--vocab", "32000"],
             ["--batch", "16", "--prompt-len", "256", "--response-len", "1792", "--micro-batch", "2",
              "--rollout-new-tokens", "256"])
DRY_RUN_SCALE = (["--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "128",
                  "--vocab", "256"],
                 ["--batch", "4", "--prompt-len", "8", "--response-len", "24", "--micro-batch", "2",
                  "--rollout-new-tokens", "8"])


def steps(out: str, dry_run: bool) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in seconds) of each measuring step."""
    py = sys.executable
    model, workload = DRY_RUN_SCALE if dry_run else GPU_SCALE
    return [
        ("gpu_tests", [py, "-m", "pytest", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider", "-q",
                       f"--junitxml={out}/gpu_tests.xml"], 180),
        ("throughput", [py, "tools/benchmark_throughput.py", *model, *workload, "--rollout-prompts", "8",
                        "--rollout-n", "2", "--warmup", "1", "--reps", "3", "--json", f"{out}/throughput.json"], 240),
        ("transport", [py, "benchmarks/weight_transport.py", "--device", "cpu" if dry_run else "cuda", *model,
                       "--reps", "3", "--json", f"{out}/transport.json"], 150),
    ]


def environment() -> dict:
    import torch

    from megatron_sgpo.platform import te

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (dry run)"
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "device_name": name, "transformer_engine": te.guard(),
           "transformer_engine_absent_because": te.unavailable_reason() or "not installed"}
    for name in ("megatron.core", "transformers"):
        try:
            env[name] = __import__(name, fromlist=["__version__"]).__version__
        except Exception as exc:  # a missing package is a finding of the check, not a crash
            env[name] = f"unavailable: {type(exc).__name__}: {exc}"
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True)
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except FileNotFoundError:
        env["nvidia_smi"] = "no nvidia-smi"
    return env


def run_step(cmd: list[str], limit: float, env: dict) -> dict:
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit, env=env)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, text = None, f"{exc.stdout or ''}{exc.stderr or ''}\n[timed out after {limit:.0f} s]"
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.monotonic() - start, 1), "tail": text[-3000:]}


def parse_junit(path: str) -> list[dict]:
    """One row per test case: name, outcome (passed/failed/error/skipped), seconds, message."""
    if not os.path.exists(path):
        return []
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                message = (node.get("message") or "")[:300]
        rows.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                     "seconds": float(case.get("time") or 0), "message": message})
    return rows


def _load(path: str):
    return json.load(open(path)) if os.path.exists(path) else None


def _f(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    """The tables docs/benchmarks.md takes, from gpu_check.json."""
    env = result["environment"]
    te = "yes" if env.get("transformer_engine") else f"no ({env.get('transformer_engine_absent_because')})"
    lines = [f"GPU check, {result['date_utc']}: {env.get('device_name')} ({env.get('nvidia_smi')}), torch "
             f"{env.get('torch')} / CUDA {env.get('cuda')}, megatron-core {env.get('megatron.core')}, Transformer "
             f"Engine {te}.", f"Command: `{result['command']}`", "", "| step | exit | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {s['rc']} | {s['seconds']} |" for name, s in result["steps"].items()]
    tests = result.get("tests") or []
    if tests:
        counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
        lines += ["", "gpu tests: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v), "",
                  "| test | outcome | seconds |", "|---|---|---|"]
        for t in tests:
            outcome = f"{t['outcome']}: {t['message']}" if t["message"] else t["outcome"]
            lines.append(f"| {t['test']} | {outcome} | {t['seconds']:.1f} |")
    rep = result.get("throughput")
    if rep:
        lines += ["", f"Throughput, {rep['model']['params'] / 1e9:.2f}B params, {rep['precision']}, "
                      f"{rep['workload']['batch']} x {rep['workload']['seq_len']} tokens, micro-batch "
                      f"{rep['workload']['micro_batch']}, peak {rep['peak_tflops']} TFLOP/s:", "",
                  "| phase | tokens/s | TFLOP/s | MFU | peak GiB |", "|---|---|---|---|---|"]
        for phase in ("train", "logprob", "rollout"):
            x = rep.get(phase)
            if x:
                lines.append(f"| {phase} | {x['tokens_per_s']:.0f} | {_f(x.get('tflops_total'), '.1f')} | "
                             f"{_f(x.get('mfu'), '.1%')} | {_f(x.get('peak_memory_gib'), '.2f')} |")
        plan = rep["planner_train_memory_gib"]
        lines.append(f"\nPlanner's training memory for this model and layout: {plan['total']:.2f} GiB (weights "
                     f"{plan['weights']:.2f}, grads {plan['grads']:.2f}, optimizer {plan['optimizer']:.2f}, "
                     f"activations {plan['activations']:.2f}, logits {plan['logits']:.2f}); measured train peak "
                     f"{_f(rep.get('train', {}).get('peak_memory_gib'), '.2f')} GiB.")
        if "sync" in rep:
            s = rep["sync"]
            lines.append(f"Weight sync (trainer -> local engine, in process): {s['GBps']:.2f} GB/s, "
                         f"{s['ratio_to_copy']:.3f}x a device copy ({s['copy_GBps']:.1f} GB/s).")
    transport = result.get("transport")
    if transport:
        for kind in ("tensor", "per_tensor", "broadcast"):
            if kind in transport:
                t = transport[kind]
                lines.append(f"Transport `{kind}` into `sgpo serve`: {t['GBps']:.2f} GB/s, "
                             f"{t['ratio_to_copy']:.3f}x a device copy ({transport['copy']['GBps']:.1f} GB/s); "
                             f"verified {t['verified']}.")
    return "\n".join(lines) + "\n"


def write(result: dict, out: str) -> None:
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
        f.write(markdown(result))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check")
    p.add_argument("--budget-s", type=float, default=450, help="all steps together stop by then")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="run every step on the CPU with a tiny model, to check the commands before a GPU is lent")
    a = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not a.cpu_dry_run:
        print("gpu_check: no CUDA device on this machine; nothing to do (run it where a GPU is: docs/benchmarks.md)")
        return 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    if a.cpu_dry_run:
        env.update(SGPO_GPU_TEST_DEVICE="cpu", OMP_NUM_THREADS="1")
    deadline = time.monotonic() + a.budget_s
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    sys.path.insert(0, ROOT)
    result = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv),
              "environment": environment(), "steps": {}}
    write(result, out)
    for name, cmd, limit in steps(out, a.cpu_dry_run):
        left = deadline - time.monotonic()
        if left < 20:
            result["steps"][name] = {"cmd": " ".join(cmd), "rc": None, "seconds": 0, "tail": "skipped: budget spent"}
            continue
        result["steps"][name] = run_step(cmd, min(limit, left), env)
        result["tests"] = parse_junit(os.path.join(out, "gpu_tests.xml"))
        result["throughput"] = _load(os.path.join(out, "throughput.json"))
        result["transport"] = _load(os.path.join(out, "transport.json"))
        write(result, out)
        print(f"gpu_check: {name} exit {result['steps'][name]['rc']} in {result['steps'][name]['seconds']} s",
              flush=True)
    print(markdown(result))
    return 0 if all(s["rc"] == 0 for s in result["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
