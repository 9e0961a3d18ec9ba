"""SGLangClient against the real SGLang 0.5.23 server on CPU (tier `sglang`, about 1.5 minutes on 2 cores).

The server runs from its own venv (tools/setup_sglang_cpu.sh; SGPO_SGLANG_PYTHON overrides its python), started by
our launcher with its CPU preset; the shared contract tests of tests/rollout/sglang_contract.py run against it.
"""
import os

import pytest

from megatron_sgpo.platform.dist import free_port
from megatron_sgpo.rollout.launcher import SGLangLauncher
from tests.rollout.sglang_contract import *  # noqa: F401,F403  (the shared contract tests, collected here)

from .conftest import ROOT, SHIMS

pytestmark = [pytest.mark.sglang, pytest.mark.timeout(300)]
PYTHON = os.environ.get("SGPO_SGLANG_PYTHON", os.path.join(ROOT, ".venv-sglang", "bin", "python"))


@pytest.fixture(scope="module")
def model_dir(engine_model_dir):
    return engine_model_dir


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    if not os.path.exists(PYTHON):
        pytest.fail(f"no SGLang venv at {PYTHON}: run `bash tools/setup_sglang_cpu.sh` (or set SGPO_SGLANG_PYTHON)")
    log = tmp_path_factory.mktemp("sglang") / "server.log"
    launcher = SGLangLauncher.sglang(model_dir, free_port(), device="cpu", max_total_tokens=16384, python=PYTHON,
                                     env={"PYTHONPATH": SHIMS, "OMP_NUM_THREADS": "1"}, log_path=str(log))
    launcher.start(timeout_s=240)
    yield launcher
    launcher.stop()


def test_it_is_the_real_sglang(server, client):
    info = client.server_info()
    assert info["device"] == "cpu" and info["attention_backend"] == "torch_native" and info["dtype"] == "float32"
    assert "sglang.launch_server" in " ".join(server.argv) and "--weight-version" in server.argv
    assert isinstance(client.weight_version, int)  # an integer version (SGLang's default is "default")


def test_a_killed_launcher_leaves_no_sglang_process_behind(model_dir):
    """SIGKILL of the process that launched the real server (a trainer, a test run): the server and every worker
    SGLang started (scheduler, detokenizer) are gone within seconds, although the server runs in its own session."""
    import signal
    import subprocess
    import sys

    import psutil

    script = (f"import time; from megatron_sgpo.platform.dist import free_port; "
              f"from megatron_sgpo.rollout.launcher import SGLangLauncher; "
              f"L = SGLangLauncher.sglang({model_dir!r}, free_port(), device='cpu', max_total_tokens=16384, "
              f"python={PYTHON!r}, env={{'PYTHONPATH': {SHIMS!r}, 'OMP_NUM_THREADS': '1'}}); "
              f"L.start(timeout_s=240); print(L.pid, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    server = psutil.Process(int(parent.stdout.readline()))
    tree = [server, *server.children(recursive=True)]
    assert len(tree) >= 3, [p.cmdline() for p in tree]  # the HTTP server and SGLang's workers
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    gone, alive = psutil.wait_procs(tree, timeout=20)
    assert not alive, [p.cmdline() for p in alive]
