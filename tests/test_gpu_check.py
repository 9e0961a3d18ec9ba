"""tools/gpu_check.py on a machine without a GPU: one line and nothing else; its JUnit parsing and its report."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "gpu_check.py")
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _tool():
    spec = importlib.util.spec_from_file_location("gpu_check", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_without_cuda_it_says_so_in_one_line_and_does_nothing(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, TOOL, "--out", str(out)], capture_output=True, text=True, env=ENV,
                          timeout=120)
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == ["gpu_check: no CUDA device on this machine; nothing to do (run it where a GPU "
                                        "is: docs/benchmarks.md)"]
    assert not out.exists()


def test_junit_results_are_read_test_by_test(tmp_path):
    (tmp_path / "test_three.py").write_text(textwrap.dedent("""
        import pytest
        def test_ok(): assert True
        def test_bad(): assert 1 == 2, "one is not two"
        @pytest.mark.skip(reason="no TE here")
        def test_skipped(): pass
    """))
    xml = tmp_path / "r.xml"
    subprocess.run([sys.executable, "-m", "pytest", "test_three.py", f"--junitxml={xml}", "-p", "no:cacheprovider",
                    "-o", "addopts=", "-q"], cwd=tmp_path, capture_output=True, env=ENV, timeout=120)
    rows = {r["test"].split("::")[-1]: r for r in _tool().parse_junit(str(xml))}
    assert {k: r["outcome"] for k, r in rows.items()} == {"test_ok": "passed", "test_bad": "failed",
                                                          "test_skipped": "skipped"}
    assert "one is not two" in rows["test_bad"]["message"] and rows["test_skipped"]["message"] == "no TE here"
    assert _tool().parse_junit(str(tmp_path / "missing.xml")) == []


def test_report_holds_every_figure_of_a_real_throughput_report(tmp_path):
    path = tmp_path / "throughput.json"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark_throughput.py"), "--hidden", "64", "--layers", "2",
           "--heads", "4", "--kv-heads", "2", "--ffn", "128", "--vocab", "256", "--batch", "4", "--prompt-len", "8",
           "--response-len", "8", "--micro-batch", "2", "--rollout-prompts", "2", "--reps", "1", "--json", str(path)]
    assert subprocess.run(cmd, capture_output=True, env=ENV, timeout=300).returncode == 0
    rep = json.loads(path.read_text())
    result = {"date_utc": "2026-11-28 00:00 UTC", "command": "bash tools/gpu_check.sh /out",
              "environment": {"device_name": "NVIDIA H100 80GB HBM3", "nvidia_smi": "H100, 580, 81559 MiB",
                              "torch": "2.11.0", "cuda": "13.0", "megatron.core": "0.16.1",
                              "transformer_engine": False, "transformer_engine_absent_because": "not installed"},
              "steps": {"gpu_tests": {"rc": 1, "seconds": 50.0}, "throughput": {"rc": 0, "seconds": 90.0}},
              "tests": [{"test": "tests.gpu.t::a", "outcome": "passed", "seconds": 1.0, "message": ""},
                        {"test": "tests.gpu.t::b", "outcome": "failed", "seconds": 2.0,
                         "message": "assert 0.2 <= 0.05"}],
              "throughput": rep,
              "transport": {"copy": {"GBps": 3000.0}, "tensor": {"GBps": 1500.0, "ratio_to_copy": 0.5,
                                                                 "verified": True}}}
    md = _tool().markdown(result)
    assert "Transformer Engine no (not installed)" in md and "| throughput | 0 | 90.0 |" in md
    assert "gpu tests: 1 passed, 1 failed" in md and "| tests.gpu.t::b | failed: assert 0.2 <= 0.05 | 2.0 |" in md
    for phase in ("train", "logprob", "rollout"):
        assert f"| {phase} | {rep[phase]['tokens_per_s']:.0f} |" in md
    assert f"{rep['planner_train_memory_gib']['total']:.2f} GiB" in md
    assert f"{rep['sync']['ratio_to_copy']:.3f}x a device copy" in md
    assert "Transport `tensor` into `sgpo serve`: 1500.00 GB/s, 0.500x a device copy (3000.0 GB/s); verified True" in md


def test_cpu_dry_run_runs_every_step_of_the_check(tmp_path):
    """Each command of the GPU check, at tiny scale on the CPU: a rename or a broken flag shows up here,
    not during a 15-minute GPU lease."""
    proc = subprocess.run([sys.executable, TOOL, "--cpu-dry-run", "--out", str(tmp_path)], capture_output=True,
                          text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {name: s["rc"] for name, s in result["steps"].items()} == {"gpu_tests": 0, "throughput": 0, "transport": 0}
    outcomes = {t["test"].split("::")[-1]: t["outcome"] for t in result["tests"]}
    assert all(v == "passed" for k, v in outcomes.items() if "_te_" not in k) and len(outcomes) >= 7
    assert {"train", "logprob", "rollout", "sync"} <= set(result["throughput"])
    assert result["transport"]["tensor"]["verified"] and result["transport"]["broadcast"]["verified"]
    assert (tmp_path / "gpu_check.md").read_text() == _tool().markdown(result)
