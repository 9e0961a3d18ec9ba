"""tools/benchmark_throughput.py: peak lookup, FLOP accounting against the ledger, a tiny real run."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from megatron_sgpo.bench.throughput import Workload, llama_config, peak_tflops, rates, step_flops
from megatron_sgpo.model.flops import ModelShape, inference_flops, logprob_flops, training_flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "benchmark_throughput.py")


def _tool():
    spec = importlib.util.spec_from_file_location("benchmark_throughput", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_peak_lookup_knows_only_hopper_sxm():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert peak_tflops("NVIDIA H100 80GB HBM3", "fp8") == 1979.0
    assert peak_tflops("NVIDIA H200", "bf16") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") is None  # lower-clocked part: no MFU rather than a wrong one
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") is None
    assert peak_tflops("NVIDIA H100 80GB HBM3", "fp32") is None


def test_rates_take_the_median_and_give_mfu_only_with_a_peak():
    r = rates([3.0, 1.0, 2.0], tokens=100, flops=8e12, world=4, peak=None)
    assert r["seconds_median"] == 2.0 and r["tokens_per_s"] == 50.0 and r["tokens_per_s_best"] == 100.0
    assert r["tflops_total"] == pytest.approx(4.0) and r["tflops_per_device"] == pytest.approx(1.0)
    assert "mfu" not in r
    assert rates([2.0], 100, 8e12, 4, peak=10.0)["mfu"] == pytest.approx(0.1)


def test_step_flops_are_the_ledger_formula_per_sequence():
    cfg = llama_config(64, 3, 4, 2, 160, 500)
    shape = ModelShape.from_hf_config(cfg)
    w = Workload(batch=6, prompt_len=10, response_len=22)
    f = step_flops(shape, w)
    assert f["training"] == 6 * training_flops(shape, 32) == 3 * f["logprob"]
    assert f["logprob"] == 6 * logprob_flops(shape, 32)
    with pytest.raises(ValueError):
        Workload(batch=0)
    with pytest.raises(ValueError):
        llama_config(65, 2, 4, 2, 8, 10)


def test_compare_reports_other_over_base():
    base = {"train": {"tokens_per_s": 100.0}, "sync": {"GBps": 2.0, "ratio_to_copy": 0.5}}
    other = {"train": {"tokens_per_s": 150.0}, "sync": {"GBps": 1.0, "ratio_to_copy": 0.25}}
    assert _tool().compare(base, other) == {"train.tokens_per_s": 1.5, "sync.GBps": 0.5, "sync.ratio_to_copy": 0.5}


def test_tiny_run_reports_consistent_figures(tmp_path):
    out = tmp_path / "tiny.json"
    flags = dict(hidden=32, layers=2, heads=4, kv_heads=2, ffn=64, vocab=128)
    cmd = [sys.executable, TOOL, *[a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", str(v))],
           "--batch", "4", "--prompt-len", "6", "--response-len", "5", "--micro-batch", "3",
           "--rollout-prompts", "2", "--rollout-n", "3", "--warmup", "0", "--reps", "2", "--json", str(out)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rep = json.loads(out.read_text())
    assert "train" in proc.stdout and "plain copy" in proc.stdout  # the table was printed

    shape = ModelShape.from_hf_config(llama_config(**flags))
    assert (rep["world_size"], rep["tp"], rep["dp"], rep["device"]) == (1, 1, 1, "cpu")
    assert rep["peak_tflops"] is None
    for phase in ("train", "logprob"):
        r = rep[phase]
        assert r["tokens"] == 4 * 11 and len(r["seconds_all"]) == 2
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds_median"])
        assert "mfu" not in r  # CPU: no peak, no MFU
    assert rep["train"]["flops"] == 4 * training_flops(shape, 11)
    assert rep["logprob"]["flops"] == 4 * logprob_flops(shape, 11)
    # no EOS in the random-init config: every sample runs to max_new_tokens
    assert rep["rollout"]["tokens"] == 2 * 3 * 5 and rep["rollout"]["sequences"] == 6
    assert rep["rollout"]["flops"] == 6 * inference_flops(shape, 6, 5)
    # the sync moves every HF tensor once, in fp32 on CPU, and the copy baseline covers the same bytes
    s = rep["sync"]
    assert s["bytes"] == 4 * shape.total_params() == s["copy_bytes"]
    assert s["tensors"] == 2 + 1 + 9 * 2  # embed, lm_head, final norm + 9 tensors per layer
    assert s["ratio_to_copy"] == pytest.approx(s["GBps"] / s["copy_GBps"])
