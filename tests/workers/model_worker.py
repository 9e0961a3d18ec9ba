"""torchrun worker: load HF checkpoints into megatron at a given TP/PP; save logits and log-probs.

Usage: model_worker.py --tp T --pp P --out DIR --tokens FILE HF_DIR [HF_DIR ...]
Rank 0 of the last pipeline stage writes ``<basename>.pt`` with gathered logits, log-probs and entropy.
With --grad-check, every rank also checks the vocab-parallel log-prob/entropy backward against
autograd through a gathered softmax and writes ``gradcheck_rank<R>.pt``.
"""
import argparse
import os

import torch
import torch.distributed as dist

from megatron_sgpo.model.build import ModelOptions, build_model
from megatron_sgpo.model.hf_config import load_hf_config
from megatron_sgpo.model.hf_io import HFCheckpoint
from megatron_sgpo.model.load import load_hf_weights
from megatron_sgpo.model.mapping import WeightMapping
from megatron_sgpo.platform.dist import destroy_parallel, init_parallel
from megatron_sgpo.platform.layout import ParallelLayout
from megatron_sgpo.train.logprob import vocab_parallel_logprobs


def forward_logits(chunks, tokens):
    """Gathered full-vocab logits on the last stage via megatron's schedule (works for PP > 1)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    b, s = tokens.shape
    positions = torch.arange(s).unsqueeze(0).expand(b, s)

    def step(it, model):
        batch = next(it)
        out = model(batch, positions, None)
        return out, lambda logits: (logits.new_zeros(()), {"logits": gather_from_tensor_model_parallel_region(logits),
                                                            "shard": logits})

    with torch.no_grad():
        res = get_forward_backward_func()(
            forward_step_func=step, data_iterator=iter([tokens]), model=chunks[0], num_microbatches=1,
            seq_length=s, micro_batch_size=b, forward_only=True,
        )
    return res[0] if res else None


def grad_check(rank_dir):
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    r = parallel_state.get_tensor_model_parallel_rank()
    gen = torch.Generator().manual_seed(7)
    full = torch.randn(3, 5, 8 * tp, generator=gen, dtype=torch.float64).float()
    targets = torch.randint(0, 8 * tp - 3, (3, 5), generator=gen)
    w1, w2 = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    shard = full.chunk(tp, dim=-1)[r].clone().requires_grad_(True)
    lp, ent = vocab_parallel_logprobs(shard, targets, temperature=0.7, with_entropy=True, vocab_size=8 * tp - 2)
    ((lp * w1).sum() + (ent * w2).sum()).backward()
    ref = full.clone().requires_grad_(True)
    z = (ref / 0.7)[..., : 8 * tp - 2]
    logp = torch.log_softmax(z, dim=-1)
    ref_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ref_ent = -(logp.exp() * logp).sum(-1)
    ((ref_lp * w1).sum() + (ref_ent * w2).sum()).backward()
    torch.save({"lp": lp.detach(), "ref_lp": ref_lp.detach(), "ent": ent.detach(), "ref_ent": ref_ent.detach(),
                "grad": shard.grad, "ref_grad": ref.grad.chunk(tp, dim=-1)[r]},
               os.path.join(rank_dir, f"gradcheck_rank{dist.get_rank()}.pt"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--tokens", required=True)
    p.add_argument("--grad-check", action="store_true")
    p.add_argument("hf_dirs", nargs="+")
    a = p.parse_args()
    torch.set_num_threads(1)
    layout = ParallelLayout(tp=a.tp, pp=a.pp)
    init_parallel(layout, seed=1)
    from megatron.core import parallel_state

    tokens = torch.load(a.tokens, weights_only=True)
    for hf_dir in a.hf_dirs:
        cfg = load_hf_config(hf_dir)
        chunks = build_model(cfg, layout, ModelOptions())
        mapping = WeightMapping(cfg, a.tp)
        load_hf_weights(chunks, HFCheckpoint(hf_dir), mapping, parallel_state.get_tensor_model_parallel_rank())
        out = forward_logits(chunks, tokens)
        if out is not None:
            logits = out["logits"][..., : cfg["vocab_size"]]
            lp, ent = vocab_parallel_logprobs(out["shard"], torch.roll(tokens, -1, 1), with_entropy=True,
                                              vocab_size=cfg["vocab_size"])
            if parallel_state.get_tensor_model_parallel_rank() == 0:
                torch.save({"logits": logits, "logprobs": lp, "entropy": ent},
                           os.path.join(a.out, os.path.basename(hf_dir.rstrip("/")) + ".pt"))
    if a.grad_check:
        grad_check(a.out)
    dist.barrier()


if __name__ == "__main__":
    main()
    destroy_parallel()  # before interpreter exit: gloo's threads may otherwise abort the process
