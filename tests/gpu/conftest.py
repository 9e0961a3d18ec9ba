"""GPU tests: marked ``gpu`` (deselected by default) and skipped without CUDA; tools/gpu_check.py runs them.

``SGPO_GPU_TEST_DEVICE=cpu python -m pytest -m gpu tests/gpu`` runs the same checks on the CPU, a dry
run of their logic for machines without a GPU (the TE tests still need CUDA and stay skipped).
"""
import os

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> torch.device:
    name = os.environ.get("SGPO_GPU_TEST_DEVICE", "cuda")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch.device(name)


@pytest.fixture(scope="module")
def world(device):
    """This process as a world of one: NCCL (+ gloo for CPU tensors) on a GPU, gloo on the CPU."""
    from megatron_sgpo.platform.dist import destroy_parallel, init_parallel
    from megatron_sgpo.platform.layout import ParallelLayout

    init_parallel(ParallelLayout(), seed=1)
    yield
    destroy_parallel()
