"""Train a tiny bundled policy: a character-level Llama on `arith` (the quickstart's) or `signed`.

Why: the quickstart must profile and run sGPO in minutes on 2 CPU cores, so it needs a
model that already answers in the right format but whose success rate spreads from
p≈1 (1-digit sums) through medium to p≈0 (3-digit products) — the regime sGPO sorts.
We get that spread by stopping a supervised run on a skewed mix of levels at step 1000
of a 2400-step schedule (a fully annealed run makes levels 2-3 too easy). The `signed`
policy stops at step 1600 on its own mix: its task's easiest level (most of its prompts) is solved
by then, and the others are still medium.

    python tools/train_bundled_policy.py                 # arith -> megatron_sgpo/assets/arith-llama-tiny
    python tools/train_bundled_policy.py --task signed   # signed -> megatron_sgpo/assets/signed-llama-tiny

Deterministic for a seed (single thread, seeded data and init); prints the success rate
per level measured by sampling at temperature 1.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

import torch
from tqdm import tqdm

from megatron_sgpo.tasks import arith, signed
from megatron_sgpo.tasks.registry import get_task

# Per task: its level table and the defaults that produced its bundled folder (the registry's TaskSpec.policy).
TASKS = {
    "arith": dict(table=arith.LEVELS, steps=1000, mix="1:3,2:2,3:2,4:1,5:0.3"),
    "signed": dict(table=signed.LEVELS, steps=1600, mix="1:1,2:1,3:1,4:0.5,5:0.5"),
}
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = list("0123456789+-*=()QA: \n")


def build_tokenizer():
    """A character-level tokenizer (one token per character) built with `tokenizers`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>",
                                   model_max_length=64, clean_up_tokenization_spaces=False)


def build_model(tokenizer, hidden: int, layers: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def make_batch(rng: random.Random, tokenizer, size: int, mix: dict[int, float], table: dict):
    """Right-padded (input_ids, attention_mask, labels); loss only on answer + eos."""
    levels, weights = zip(*sorted(mix.items()))
    seqs, labels = [], []
    for level in rng.choices(levels, weights=weights, k=size):
        expr, value = arith.make_problem(rng, level, table)
        prompt = tokenizer(arith.format_prompt(expr))["input_ids"]
        answer = tokenizer(str(value), add_special_tokens=False)["input_ids"]
        answer.append(tokenizer.eos_token_id)
        seqs.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    lab = torch.tensor([l + [-100] * (width - len(l)) for l in labels])
    return ids, mask, lab


@torch.no_grad()
def success_rates(model, tokenizer, n_prompts: int, k: int, seed: int, table: dict, batch: int = 400):
    """Per level: mean reward over n_prompts × k samples at temperature 1."""
    model.eval()
    tokenizer.padding_side = "left"
    verifier = arith.ArithVerifier()
    items = arith.generate(n_prompts, seed=seed, prefix="eval", table=table)
    torch.manual_seed(seed)
    flat = [it for it in items for _ in range(k)]
    hits: dict[int, list[float]] = {}
    for start in range(0, len(flat), batch):
        chunk = flat[start:start + batch]
        enc = tokenizer([it.prompt for it in chunk], return_tensors="pt", padding=True)
        out = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"],
                             do_sample=True, temperature=1.0, top_k=None, top_p=None,
                             max_new_tokens=8, pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for it, text in zip(chunk, texts):
            hits.setdefault(it.meta["level"], []).append(verifier.score(it, text))
    model.train()
    return {level: sum(v) / len(v) for level, v in sorted(hits.items())}


def fix_tokenizer_config(out: str) -> None:
    """Name the class transformers 4.x also knows (5.x writes "TokenizersBackend"), pad left."""
    path = os.path.join(out, "tokenizer_config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(tokenizer_class="PreTrainedTokenizerFast", padding_side="left")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)


def save(model, tokenizer, out: str, meta: dict) -> None:
    from transformers import GenerationConfig

    os.makedirs(out, exist_ok=True)
    tokenizer.padding_side = "left"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    fix_tokenizer_config(out)
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=1.0,
                     top_k=None, top_p=None, max_new_tokens=8).save_pretrained(out)
    with open(os.path.join(out, "training_info.json"), "w") as f:
        json.dump(meta, f, indent=2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), default="arith")
    p.add_argument("--out", help="default: the task's bundled folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int,
                   help="stop here, early in the schedule: a partially trained policy (default: the task's)")
    p.add_argument("--horizon", type=int, default=2400,
                   help="length of the warmup+cosine schedule (independent of --steps, so a "
                        "run stopped at N equals a longer run's step N)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--mix", help="level:weight pairs of the training mix (default: the task's)")
    p.add_argument("--eval-prompts", type=int, default=50)
    p.add_argument("--eval-k", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=0, help="also evaluate during training")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    task = TASKS[args.task]
    for key in ("steps", "mix"):
        if getattr(args, key) is None:
            setattr(args, key, task[key])
    args.out = args.out or os.path.relpath(get_task(args.task).policy)
    table = task["table"]

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    mix = {int(a): float(b) for a, b in (kv.split(":") for kv in args.mix.split(","))}
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, args.hidden, args.layers, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}  vocab: {len(tokenizer)}", file=sys.stderr)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, args.horizon // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.horizon)))))
    rng = random.Random(args.seed)
    t0 = time.time()
    model.train()
    bar = tqdm(range(args.steps), desc="sft", file=sys.stderr)
    for step in bar:
        ids, mask, labels = make_batch(rng, tokenizer, args.batch, mix, table)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            rates = success_rates(model, tokenizer, 25, 4, seed=1234, table=table)
            tqdm.write(f"step {step + 1}: " + "  ".join(f"L{l}={r:.2f}" for l, r in rates.items()),
                       file=sys.stderr)
    train_s = time.time() - t0
    rates = success_rates(model, tokenizer, args.eval_prompts, args.eval_k, seed=1234, table=table)
    print(f"trained {args.steps} steps in {train_s:.0f}s; success rate at temperature 1 "
          f"({args.eval_prompts} prompts x {args.eval_k} samples per level):")
    print("| level | example | p |\n|---|---|---|")
    for level, rate in rates.items():
        example = arith.make_problem(random.Random(level), level, table)[0]
        print(f"| {level} | `{example}` | {rate:.2f} |")
    save(model, tokenizer, args.out, {
        "args": vars(args), "parameters": n_params, "train_seconds": round(train_s, 1),
        "success_rate_by_level": {str(k): round(v, 3) for k, v in rates.items()}})
    print(f"saved to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
