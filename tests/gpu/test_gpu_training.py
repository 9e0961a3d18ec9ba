"""The real megatron model on one GPU (NCCL world of one): log-probs against transformers in fp32 and bf16,
a bf16 RL step, and the weight sync into the local engine on the same GPU."""
import pytest
import torch

from megatron_sgpo.algo.loss import LossConfig
from megatron_sgpo.model.build import ModelOptions
from megatron_sgpo.model.hf_config import load_hf_config
from megatron_sgpo.model.hf_io import HFCheckpoint
from megatron_sgpo.model.mapping import WeightMapping
from megatron_sgpo.platform.layout import ParallelLayout
from megatron_sgpo.train.policy import OptimConfig, Policy
from megatron_sgpo.train.step import collate
from megatron_sgpo.train.update import attach_old_logprobs, make_loss_fn
from megatron_sgpo.weights.stage_tensors import stage_hf_tensors
from megatron_sgpo.weights.sync import sync_weights

pytestmark = pytest.mark.gpu
SEQS = [[3, 17, 42, 8, 8, 21, 64, 5, 9, 11, 30, 2], [7, 7, 50, 13, 90, 1, 4, 33]]


def policy(path: str, dtype: str) -> Policy:
    p = Policy(load_hf_config(path), ParallelLayout(dp=1), 1, ModelOptions(dtype=dtype), OptimConfig(lr=1e-3))
    p.load_hf(HFCheckpoint(path))
    return p


def batch():
    mb = collate(SEQS, [2, 3])
    mb.fields["advantages"] = torch.tensor([1.0, -1.0])
    mb.fields["weights"] = torch.ones(2)
    return mb


def reference_logprobs(model, mb) -> torch.Tensor:
    """transformers' log-probs of each next token, aligned like the trainer's (position t scores token t+1)."""
    ids = mb.tokens.to(model.device)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
    return logp.gather(-1, torch.roll(ids, -1, 1)[..., None])[..., 0].cpu()


def max_masked_diff(a, b, mask) -> float:
    return ((a.float().cpu() - b.float()).abs() * mask).max().item()


@pytest.mark.parametrize("dtype, torch_dtype, tol", [("fp32", torch.float32, 1e-3), ("bf16", torch.bfloat16, 5e-2)])
def test_trainer_logprobs_match_transformers(world, device, tiny_models, dtype, torch_dtype, tol):
    import transformers

    path = tiny_models["llama"]
    mb = batch()
    got = policy(path, dtype).logprobs([mb])[0]["logprobs"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device)
    assert max_masked_diff(got, reference_logprobs(hf, mb), mb.loss_mask) <= tol


def test_bf16_rl_step_then_sync_into_the_engine_on_the_same_device(world, device, tiny_models):
    from megatron_sgpo.rollout.local import LocalEngine

    path = tiny_models["qwen2"]  # tied embeddings and QKV bias
    p = policy(path, "bf16")
    mb = batch()
    attach_old_logprobs(p, [mb])
    before = [t.detach().clone() for t in p.modules()[0].parameters()]
    metrics = p.train_step([mb], make_loss_fn(LossConfig(), float(mb.loss_mask.sum())))
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()) and metrics["grad_norm"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, p.modules()[0].parameters()))

    engine = LocalEngine(path, device=str(device), dtype=torch.bfloat16)
    mapping = WeightMapping(p.hf_config, 1)
    sent = sync_weights(p.modules(), mapping, engine, version=5, bucket_bytes=4096, dtype=engine.dtype)
    assert engine.weight_version == 5 and sent["buckets"] > 1
    engine_params = dict(engine.model.named_parameters(remove_duplicate=False))
    for name, tensor in stage_hf_tensors(p.modules(), mapping, engine.dtype):
        assert torch.equal(engine_params[name].detach().cpu(), tensor.cpu()), name  # bit-exact after the sync
    trainer = p.logprobs([mb])[0]["logprobs"]
    assert max_masked_diff(trainer, reference_logprobs(engine.model, mb), mb.loss_mask) <= 5e-2
