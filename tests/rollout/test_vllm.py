"""VLLMEngine cannot run on CPU; its import must be lazy and its absence explained."""
import sys

import pytest

from megatron_sgpo.rollout.engine import EngineError


def test_missing_vllm_gives_a_clear_error(monkeypatch):
    import megatron_sgpo.rollout.vllm as v

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(EngineError, match=r"needs the 'vllm' package.*pip install"):
        v.VLLMEngine("/nonexistent")
