"""Sequence parallelism on CPU: TP=2 with SP gives TP=1's log-probs and gradients (real megatron, gloo).

The step's sequences have odd, different lengths (7, 11, 13, 9) in two micro-batches, so SP's padding to
a multiple of TP and its split of the sequence over TP ranks are both exercised through Policy.
"""
import pytest
import torch

from megatron_sgpo.config import check_platform, load_config
from tests.distributed import load, torchrun

FAMILIES = ["qwen2", "llama", "qwen3"]  # qwen2: QKV bias + tied embeddings; llama: untied; qwen3: q/k norms


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory):
    outs = {}
    for key, nproc, args in [("tp1", 1, ["--tp", "1"]), ("tp2sp", 2, ["--tp", "2", "--sp"])]:
        out = str(tmp_path_factory.mktemp(key))
        torchrun("sp_worker.py", nproc, [*args, "--out", out, *(tiny_models[f] for f in FAMILIES)])
        outs[key] = {f: load(out, f"{f}.pt") for f in FAMILIES}
    return outs


@pytest.mark.parametrize("family", FAMILIES)
def test_sp_logprobs_and_gradients_equal_tp1(runs, family):
    ref, got = runs["tp1"][family], runs["tp2sp"][family]
    assert [s[1] % 2 for s in got["shapes"]] == [0, 0] and len({s[1] for s in ref["shapes"]}) == 2
    assert ref["logprobs"].keys() == got["logprobs"].keys()
    lp = max((ref["logprobs"][i] - got["logprobs"][i]).abs().max().item() for i in ref["logprobs"])
    assert lp <= 1e-5, f"max abs log-prob difference {lp}"
    assert ref["grads"].keys() == got["grads"].keys()
    worst = max((ref["grads"][k] - got["grads"][k]).abs().max().item() for k in ref["grads"])
    assert worst <= 1e-5, f"max abs gradient difference {worst}"
    assert min(g.abs().max().item() for k, g in ref["grads"].items() if "norm" in k) > 1e-6  # norms do learn
    assert got["replicated_spread"] == 0.0  # every TP rank holds the same, all-reduced, norm gradient
    assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)


def test_local_spec_with_sp_uses_the_cpu_norm_everywhere():
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    from megatron_sgpo.model.build import layer_spec
    from megatron_sgpo.platform.cpu import SequenceParallelNorm

    if torch.cuda.is_available():
        pytest.skip("the CPU layer's norm is used on CPU only")
    qwen3 = {"architectures": ["Qwen3ForCausalLM"]}
    spec = layer_spec(qwen3, sequence_parallel=True).submodules
    attention = spec.self_attention.submodules
    norms = [spec.input_layernorm, spec.pre_mlp_layernorm, attention.q_layernorm, attention.k_layernorm]
    assert norms == [SequenceParallelNorm] * 4
    assert layer_spec(qwen3).submodules.input_layernorm is WrappedTorchNorm


def test_check_platform_accepts_sequence_parallel_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    check_platform(load_config(None, ["model.parallel.tp=2", "model.parallel.sequence_parallel=true"]))
