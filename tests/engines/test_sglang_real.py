"""SGLangClient against the real SGLang 0.5.23 server on CPU (tier `sglang`, about 1 minute on 2 cores).

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
