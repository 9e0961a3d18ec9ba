"""Generated tokens/s of one `sgpo serve` engine vs two behind an EngineFleet, same prompts, measured in one run.

Each engine is its own process with one torch thread (`--threads 1`), so two engines can use two cores; the
fleet sends each prompt (with its n samples) to the engine with the fewest samples outstanding. Both set-ups
get one warm-up request per engine, then the same timed batch: PROMPTS random prompts of 8 tokens, N samples
each at temperature 1, exactly NEW tokens per sample (a model without EOS: the tiny model by default, or --model).
`--router` also measures SGLang's router (round robin) in front of the same two engines, given the python of a
venv that has `sglang-router` installed; the router is not a project dependency.

    .venv/bin/python benchmarks/fleet_throughput.py [--model DIR] [--prompts 32] [--n 4] [--new-tokens 64]
"""
import argparse
import os
import random
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def start_engines(model, count):
    from megatron_sgpo.platform.dist import free_port
    from megatron_sgpo.rollout.launcher import SGLangLauncher

    launchers = [SGLangLauncher.sgpo(model, free_port(), extra_args=["--threads", "1"]).start(wait=False)
                 for _ in range(count)]
    for launcher in launchers:
        launcher.wait_healthy(timeout_s=180)
    return launchers


def cpu_seconds(launchers):
    import psutil

    return sum(sum(psutil.Process(L.pid).cpu_times()[:2]) for L in launchers)


def measure(name, engine, launchers, batch, n, params, warm_up=1):
    """Tokens/s of one timed batch; also the engines' CPU seconds per wall second (how many cores they got)."""
    from megatron_sgpo.rollout.engine import SamplingParams

    engine.generate(batch[:warm_up], [1] * warm_up, SamplingParams(max_new_tokens=4))
    cpu0, t0 = cpu_seconds(launchers), time.perf_counter()
    out = engine.generate(batch, [n] * len(batch), params)
    wall = time.perf_counter() - t0
    cores = (cpu_seconds(launchers) - cpu0) / wall
    assert [len(g) for g in out] == [n] * len(batch), "a prompt did not get its n completions"
    tokens = sum(len(c.token_ids) for g in out for c in g)
    print(f"{name:26s} {tokens:6d} tokens in {wall:7.2f} s = {tokens / wall:8.1f} tok/s, engines busy "
          f"{cores:.2f} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    return tokens / wall


def through_router(router_python, launchers, batch, n, new_tokens):
    """The same batch sent to SGLang's router, which forwards each request to one engine (round robin). The router
    takes one sampling_params object and one rid per request, not SGLangClient's per-sample lists, so each prompt
    goes as n copies in one request (the batch the engines get from the fleet too), unseeded, 32 in flight."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from megatron_sgpo.platform.dist import free_port
    from megatron_sgpo.rollout.launcher import SGLangLauncher

    port = free_port()
    argv = [router_python, "-m", "sglang_router.launch_router", "--worker-urls", *[L.url for L in launchers],
            "--policy", "round_robin", "--host", "127.0.0.1", "--port", str(port)]
    router = SGLangLauncher(argv, f"http://127.0.0.1:{port}").start(timeout_s=120)

    def one(prompt, copies, tokens):
        body = {"input_ids": [prompt] * copies, "return_logprob": True,
                "sampling_params": {"temperature": 1.0, "max_new_tokens": tokens}}
        r = requests.post(router.url + "/generate", json=body, timeout=600)
        r.raise_for_status()
        out = r.json()
        assert len(out) == copies, f"the router answered {len(out)} completions for {copies}"
        return sum(len(c["output_ids"]) for c in out)

    try:
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda p: one(p, 1, 4), batch[:len(launchers)]))  # warm-up, one request per engine
            cpu0, t0 = cpu_seconds(launchers), time.perf_counter()
            tokens = sum(pool.map(lambda p: one(p, n, new_tokens), batch))
            wall = time.perf_counter() - t0
    finally:
        router.stop()
    cores = (cpu_seconds(launchers) - cpu0) / wall
    print(f"{'2 engines, sglang-router':26s} {tokens:6d} tokens in {wall:7.2f} s = {tokens / wall:8.1f} tok/s, engines "
          f"busy {cores:.2f} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    return tokens / wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF model folder (default: a tiny random Llama, made here)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--router", default=None, metavar="PYTHON", help="python of a venv with sglang-router")
    args = ap.parse_args()
    from megatron_sgpo.rollout.engine import SamplingParams
    from megatron_sgpo.rollout.fleet import EngineFleet
    from megatron_sgpo.rollout.sglang import SGLangClient

    tmp = tempfile.mkdtemp(prefix="fleet_bench_")
    if args.model is None:
        from tests.rollout.helpers import build_tiny_model

        args.model = build_tiny_model(os.path.join(tmp, "tiny"), eos_token=None)
    rng = random.Random(0)
    batch = [[rng.randrange(3, 200) for _ in range(8)] for _ in range(args.prompts)]
    # min_new_tokens is not a SamplingParams knob: without an EOS in the tokenizer every sample runs to the limit
    params = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens)
    print(f"{args.prompts} prompts x {args.n} samples, {args.new_tokens} new tokens at most, model {args.model}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    rates = {}
    for count in (1, 2):
        launchers = start_engines(args.model, count)
        try:
            clients = [SGLangClient(L.url, launcher=L, timeout_s=600) for L in launchers]
            with EngineFleet(clients) as fleet:
                rates[count] = measure(f"{count} engine(s), fleet", fleet, launchers, batch, args.n, params,
                                       warm_up=count)
            if count == 2 and args.router:
                rates["router"] = through_router(args.router, launchers, batch, args.n, args.new_tokens)
        finally:
            for L in launchers:
                L.stop()
    print(f"2 vs 1 engine (fleet): {rates[2] / rates[1]:.2f}x", flush=True)
    if "router" in rates:
        print(f"2 vs 1 engine (sglang-router): {rates['router'] / rates[1]:.2f}x", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
