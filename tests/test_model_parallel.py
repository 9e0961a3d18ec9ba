"""Megatron GPTModel built from HF configs: logits equal transformers', at TP=1, TP=2 and PP=2."""
import os

import pytest
import torch

from tests.distributed import load, torchrun


def hf_logits(path, tokens):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    with torch.no_grad():
        return model(tokens).logits


@pytest.fixture(scope="module")
def runs(tiny_models, tokens, tmp_path_factory):
    """One torchrun launch per layout, covering all families (launches dominate the cost)."""
    tok_file = str(tmp_path_factory.mktemp("tok") / "tokens.pt")
    torch.save(tokens, tok_file)
    outs = {}
    for tp, pp in [(1, 1), (2, 1), (1, 2)]:
        out = str(tmp_path_factory.mktemp(f"tp{tp}pp{pp}"))
        extra = ["--grad-check"] if tp == 2 else []
        torchrun("model_worker.py", tp * pp, ["--tp", str(tp), "--pp", str(pp), "--out", out, "--tokens", tok_file,
                                              *extra, *tiny_models.values()])
        outs[(tp, pp)] = out
    return outs


@pytest.mark.parametrize("layout", [(1, 1), (2, 1), (1, 2)], ids=["tp1", "tp2", "pp2"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_megatron_logits_match_transformers(runs, tiny_models, tokens, family, layout):
    got = load(runs[layout], f"{family}.pt")
    ref = hf_logits(tiny_models[family], tokens)
    assert got["logits"].shape == ref.shape
    assert (got["logits"] - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_tp2_and_pp2_logprobs_equal_tp1(runs, family):
    base = load(runs[(1, 1)], f"{family}.pt")
    for layout in [(2, 1), (1, 2)]:
        other = load(runs[layout], f"{family}.pt")
        assert (other["logprobs"] - base["logprobs"]).abs().max().item() <= 1e-5
        assert (other["entropy"] - base["entropy"]).abs().max().item() <= 1e-5


def test_logprobs_are_log_softmax_of_logits(runs, tokens):
    got = load(runs[(1, 1)], "llama.pt")
    ref = torch.log_softmax(got["logits"], -1).gather(-1, torch.roll(tokens, -1, 1).unsqueeze(-1)).squeeze(-1)
    assert (got["logprobs"] - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("rank", [0, 1])
def test_vocab_parallel_gradients_match_gathered_softmax(runs, rank):
    g = load(runs[(2, 1)], f"gradcheck_rank{rank}.pt")
    assert (g["lp"] - g["ref_lp"]).abs().max().item() <= 1e-5
    assert (g["ent"] - g["ref_ent"]).abs().max().item() <= 1e-5
    assert (g["grad"] - g["ref_grad"]).abs().max().item() <= 1e-5
    assert g["grad"].abs().max().item() > 0  # the check is not vacuous
