"""GPU only: the Transformer Engine spec (bf16, FP8) matches the local spec on the same weights."""
import pytest
import torch

from tests.conftest import make_tiny_hf
from tests.distributed import torchrun


def _te_available() -> bool:
    from megatron_sgpo.platform import te

    return torch.cuda.is_available() and te.guard()


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _te_available(), reason="needs CUDA and Transformer Engine")]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("te")
    hf = make_tiny_hf(str(root / "llama"), "llama")
    path = str(root / "out.pt")
    torchrun("te_worker.py", 1, ["--hf", hf, "--out", path])
    return torch.load(path, weights_only=True)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_te_bf16_matches_local_spec(outputs):
    assert _rel(outputs["te"]["logits"], outputs["local"]["logits"]) < 2e-2
    assert _rel(outputs["te"]["grad"], outputs["local"]["grad"]) < 5e-2


def test_te_fp8_runs_forward_backward_close_to_bf16(outputs):
    assert torch.isfinite(outputs["te_fp8"]["logits"]).all() and torch.isfinite(outputs["te_fp8"]["grad"]).all()
    assert _rel(outputs["te_fp8"]["logits"], outputs["te"]["logits"]) < 1e-1
    assert _rel(outputs["te_fp8"]["grad"], outputs["te"]["grad"]) < 2.5e-1
