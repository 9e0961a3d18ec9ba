"""GPU-side choices of the model builder that a CPU machine can still check."""
import importlib.util

import torch

from megatron_sgpo.model import build


def test_fused_masked_softmax_only_where_apex_provides_its_kernel(monkeypatch):
    """megatron's local spec imports apex's CUDA softmax at call time: without apex, a GPU run must not ask for it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert build.fused_softmax_available() is False
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: object() if name == "scaled_upper_triang_masked_softmax_cuda" else None)
    assert build.fused_softmax_available() is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert build.fused_softmax_available() is False
