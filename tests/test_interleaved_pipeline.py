"""PP=2 × VPP=2 (interleaved schedule, gloo) trains an RL step of variable-shape micro-batches exactly as PP=1.

At PP=2 a rank's previous and next stage are one rank: a p2p call going both ways pairs its sends with the
peer's receives crossed (the variable-length shape exchange is always batched), so the build turns on
``overlap_p2p_comm``, which sends one way per call. These runs go through Policy and train/update.py.
"""
import pytest
import torch

from megatron_sgpo.config import check_platform, load_config
from megatron_sgpo.model.build import ModelOptions, transformer_config
from megatron_sgpo.model.hf_config import load_hf_config
from megatron_sgpo.platform.layout import ParallelLayout
from tests.distributed import torchrun


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("vpp")
    results = {}
    for key, nproc, extra in [("pp1", 1, []), ("pp2vpp2", 2, ["--pp", "2", "--vpp", "2"])]:
        path = str(out / f"{key}.pt")
        torchrun("vpp_step_worker.py", nproc, ["--hf", tiny_models["qwen2"], "--out", path, *extra])
        results[key] = torch.load(path, weights_only=True)
    return results


def test_micro_batches_differ_in_shape(runs):
    shapes = runs["pp2vpp2"]["shapes"]
    assert len(shapes) % 2 == 0 and len(shapes) >= 4  # the batcher rounds up to a multiple of pp
    assert len({b for b, _ in shapes}) > 1 and len({s for _, s in shapes}) > 1


def test_gradients_match_pp1(runs):
    ref, got = runs["pp1"]["grads"], runs["pp2vpp2"]["grads"]
    assert set(ref) <= set(got)
    worst = max((ref[k] - got[k]).abs().max().item() for k in ref)
    assert worst <= 1e-5, f"max abs gradient difference {worst}"
    # tied embeddings: the last stage's output layer holds the embedding gradient, summed over both stages
    assert set(got) - set(ref) == {"output_layer.weight"}
    assert (got["output_layer.weight"] - ref["embedding.word_embeddings.weight"]).abs().max().item() <= 1e-5
    assert max(v.abs().max().item() for v in ref.values()) > 1e-3  # a real gradient, not zeros


@pytest.mark.parametrize("key", ["old_logprobs", "new_logprobs"])
def test_logprobs_match_pp1_before_and_after_the_step(runs, key):
    ref, got = runs["pp1"][key], runs["pp2vpp2"][key]
    assert ref.keys() == got.keys() and len(ref) == 21
    assert max((ref[i] - got[i]).abs().max().item() for i in ref) <= 1e-5


def test_the_step_changed_the_policy(runs):
    old, new = runs["pp2vpp2"]["old_logprobs"], runs["pp2vpp2"]["new_logprobs"]
    assert max((old[i] - new[i]).abs().max().item() for i in old) > 1e-4


def test_interleaved_p2p_goes_one_way_per_call(tiny_models):
    cfg = load_hf_config(tiny_models["qwen2"])
    config = transformer_config(cfg, ParallelLayout(pp=2, vpp=2), ModelOptions())
    assert config.overlap_p2p_comm and not config.batch_p2p_comm and config.variable_seq_lengths
    plain = transformer_config(cfg, ParallelLayout(pp=2), ModelOptions())
    assert plain.batch_p2p_comm and not plain.overlap_p2p_comm  # the non-interleaved schedule refuses overlap


def test_vpp_is_accepted_on_this_machine():
    check_platform(load_config(None, ["model.parallel.pp=2", "model.parallel.vpp=2"]))
