"""Session fixtures for the rollout tests: the tiny model, an in-process engine, two servers."""
import pytest
import torch

from .helpers import build_tiny_model, free_port


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_llama")))


@pytest.fixture(scope="session")
def local_engine(tiny_model_dir):
    from megatron_sgpo.rollout.local import LocalEngine

    torch.set_num_threads(1)
    return LocalEngine(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def servers(tiny_model_dir, tmp_path_factory):
    """Three `sgpo serve` processes started side by side (imports dominate start-up time): 'main' (with SGLang's
    memory-saver and deterministic-inference flags) and 'plain' (without, as SGLang on a CPU) for the API tests,
    and 'victim' for the crash test, which kills it."""
    from megatron_sgpo.rollout.launcher import SGLangLauncher

    logs = tmp_path_factory.mktemp("server_logs")
    flags = {"main": True, "plain": False, "victim": True}
    launchers = {
        name: SGLangLauncher.sgpo(tiny_model_dir, free_port(), enable_memory_saver=on, deterministic=on,
                                  extra_args=["--threads", "1"], log_path=str(logs / f"{name}.log")).start(wait=False)
        for name, on in flags.items()
    }
    try:
        for launcher in launchers.values():
            launcher.wait_healthy(timeout_s=120)
        yield launchers
    finally:
        for launcher in launchers.values():
            launcher.stop()
