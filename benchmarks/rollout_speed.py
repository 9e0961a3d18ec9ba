"""LocalEngine decode throughput on random Llama models, with transformers' generate as the baseline.

Usage: python benchmarks/rollout_speed.py [--threads 2] [--prompts 16] [--new-tokens 64] [--sizes tiny,10m]
Prints one line per (model, mode): generated tokens/s (wall) and process CPU seconds for
LocalEngine and for `model.generate` run on the same batch in the same process, and the
ratio of their CPU times (> 1: LocalEngine does less work).
"""
import argparse
import tempfile
import time

import torch

SIZES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=256),
    "10m": dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                intermediate_size=704, vocab_size=8192),
}


def build(path, cfg):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg, eos_token_id=None, pad_token_id=0, tie_word_embeddings=False))
    model.generation_config.eos_token_id = None
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def timed(fn, repeats=1):
    """Best (wall, process CPU) seconds of `repeats` runs (the caller warms up).

    CPU time is reported because shared machines make wall time noisy: with --threads 1 it
    measures the work done, whatever else the machine is running."""
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    return (best, best_cpu), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--sizes", default="tiny,10m")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from megatron_sgpo.rollout.engine import SamplingParams
    from megatron_sgpo.rollout.local import LocalEngine

    for size in args.sizes.split(","):
        path = tempfile.mkdtemp(prefix=f"bench_{size}_")
        n_params = build(path, SIZES[size])
        eng = LocalEngine(path, device="cpu")
        g = torch.Generator().manual_seed(0)
        vocab = SIZES[size]["vocab_size"]
        prompts = [torch.randint(3, vocab, (args.prompt_len,), generator=g).tolist() for _ in range(args.prompts)]
        ids = torch.tensor(prompts)
        eng.generate(prompts[:2], [1, 1], SamplingParams(max_new_tokens=4, seed=0))  # warm-up
        for mode, params, hf_kwargs in [
            ("greedy", SamplingParams(temperature=0, max_new_tokens=args.new_tokens), dict(do_sample=False)),
            ("sampled", SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens, seed=0),
             dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)),
        ]:
            (t_ours, c_ours), out = timed(lambda: eng.generate(prompts, [1] * len(prompts), params), args.repeats)
            toks = sum(len(c.token_ids) for grp in out for c in grp)
            (t_hf, c_hf), _ = timed(lambda: eng.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                       max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                                       pad_token_id=0, **hf_kwargs), args.repeats)
            print(f"{size:5s} {n_params / 1e6:5.1f}M params  {mode:7s} {len(prompts)}x{args.new_tokens} tokens: "
                  f"LocalEngine {toks / t_ours:6.0f} tok/s wall ({t_ours:.2f} s, cpu {c_ours:.2f} s)  "
                  f"transformers.generate {toks / t_hf:6.0f} tok/s wall ({t_hf:.2f} s, cpu {c_hf:.2f} s)  "
                  f"cpu-time ratio {c_hf / c_ours:.2f}", flush=True)
        # sGPO-shaped request: variable group sizes
        ns = [1, 2, 4, 8, 1]
        vp = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens, seed=0)
        (t_var, c_var), out = timed(lambda: eng.generate(prompts[:len(ns)], ns, vp), args.repeats)
        toks = sum(len(c.token_ids) for grp in out for c in grp)
        print(f"{size:5s} variable n={ns} ({toks} tokens): LocalEngine {toks / t_var:6.0f} tok/s wall "
              f"({t_var:.2f} s, cpu {c_var:.2f} s)", flush=True)


if __name__ == "__main__":
    main()
