"""torchrun worker (GPU): the same HF weights in the local spec and in the Transformer Engine spec.

Usage: te_worker.py --hf DIR --out FILE
Saves logits and parameter gradients of the local spec (bf16) and of the TE spec (bf16, and FP8 e4m3
with the delayed recipe) on fixed tokens, so the test can compare them within bf16/FP8 tolerances.
"""
import argparse
from unittest import mock

import torch

from megatron_sgpo.model import build as model_mod
from megatron_sgpo.model.build import ModelOptions, build_model
from megatron_sgpo.model.hf_io import HFCheckpoint
from megatron_sgpo.model.load import load_hf_weights
from megatron_sgpo.model.mapping import WeightMapping
from megatron_sgpo.platform.dist import destroy_parallel, init_parallel
from megatron_sgpo.platform.layout import ParallelLayout


def run(cfg, ckpt, layout: ParallelLayout, use_te: bool, tokens):
    with mock.patch.object(model_mod, "use_transformer_engine", lambda: use_te):
        chunk = build_model(cfg, layout, ModelOptions(dtype="bf16"))[0]
    load_hf_weights([chunk], ckpt, WeightMapping(cfg), 0)
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    ctx = torch.enable_grad()
    if layout.fp8:
        import transformer_engine.pytorch as te
        from transformer_engine.common.recipe import DelayedScaling, Format

        ctx = te.fp8_autocast(enabled=True, fp8_recipe=DelayedScaling(fp8_format=Format.E4M3))
    with ctx:
        logits = chunk(tokens, positions, None)
    logits.float().square().mean().backward()
    grad = chunk.decoder.layers[0].mlp.linear_fc2.weight.grad.float().cpu()
    return {"logits": logits.detach().float().cpu(), "grad": grad}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hf", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    init_parallel(ParallelLayout(), seed=1)
    ckpt = HFCheckpoint(a.hf)
    cfg = ckpt.config
    tokens = torch.randint(0, cfg["vocab_size"], (4, 64), generator=torch.Generator().manual_seed(0)).cuda()
    out = {
        "local": run(cfg, ckpt, ParallelLayout(), False, tokens),
        "te": run(cfg, ckpt, ParallelLayout(), True, tokens),
        "te_fp8": run(cfg, ckpt, ParallelLayout(fp8="e4m3", fp8_recipe="delayed"), True, tokens),
    }
    torch.save(out, a.out)


if __name__ == "__main__":
    main()
    destroy_parallel()  # before interpreter exit: gloo's threads may otherwise abort the process
