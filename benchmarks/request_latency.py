"""Round-trip time of small requests to `sgpo serve`, with and without Nagle's algorithm on its sockets, in one run.

`sgpo serve` answers with the headers and the body in two writes. With Nagle on, the body waits for the client's
delayed ACK of the headers (about 40 ms on Linux) on every request of a kept-alive connection; the server ships
with ``disable_nagle_algorithm = True`` (TCP_NODELAY). This script builds two in-process servers on the same engine
(the bundled policy), one as shipped and one with Nagle back on as the baseline, and times the same requests
through :class:`SGLangClient` on each: ``GET /get_model_info`` and a one-token ``/generate``.

    python benchmarks/request_latency.py [--reps 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def median_ms(fn, reps: int) -> float:
    fn()  # warm-up: connection set-up and first-call work
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def measure(engine, nagle_off: bool, reps: int) -> dict:
    from megatron_sgpo.rollout.engine import SamplingParams
    from megatron_sgpo.rollout.server import build_server
    from megatron_sgpo.rollout.sglang import SGLangClient

    server = build_server(engine, "127.0.0.1", 0)
    server.RequestHandlerClass.disable_nagle_algorithm = nagle_off
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    client = SGLangClient(f"http://127.0.0.1:{server.server_address[1]}", timeout_s=60)
    try:
        one_token = SamplingParams(temperature=0, max_new_tokens=1)
        return {"get_model_info": median_ms(lambda: client.request("GET", "/get_model_info"), reps),
                "generate_1_token": median_ms(lambda: client.generate([[5, 6, 7]], [1], one_token), reps)}
    finally:
        client.close()
        server.shutdown()
        server.server_close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=20)
    a = p.parse_args(argv)
    import torch

    from megatron_sgpo.rollout.local import LocalEngine
    from megatron_sgpo.tasks.registry import BUNDLED_POLICY

    torch.set_num_threads(1)
    engine = LocalEngine(str(BUNDLED_POLICY))
    shipped, nagle = measure(engine, True, a.reps), measure(engine, False, a.reps)
    print(f"median of {a.reps} requests, bundled policy, one thread")
    print("| request | TCP_NODELAY (shipped) ms | Nagle on ms | speed-up |")
    print("|---|---|---|---|")
    for k in shipped:
        print(f"| {k} | {shipped[k]:.1f} | {nagle[k]:.1f} | {nagle[k] / shipped[k]:.1f}x |")
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
