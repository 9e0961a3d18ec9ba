"""Weight transports into a separate engine process, against a plain copy of the same bytes, in one run.

The engine is `sgpo serve` (the local engine behind SGLang's HTTP API) on the chosen device. Transports:
- ``tensor``: SGLang's ``/update_weights_from_tensor``: the client pickles tensor *handles* (CUDA IPC
  handles on a GPU, shared-memory files on the CPU), the server maps them and copies into its weights; the
  client sends one flat buffer per bucket (``load_format="flattened_bucket"``);
- ``per_tensor``: the same endpoint with one handle per tensor (no ``load_format``), the format the
  tensor path used before it flattened its buckets, as the baseline of that change;
- ``broadcast``: SGLang's ``/update_weights_from_distributed`` over a gloo group of CPU tensors (NCCL would
  need two GPUs: it refuses two ranks on one device).
The baseline is ``copy_`` of the same tensors on the same device within one process. Each transport is
checked, not only timed: after sending a zeroed LM head the server's next token must have log-prob
-log(V) (uniform), and after the real weights it must not.

    python benchmarks/weight_transport.py --device cuda --json runs/transport.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    for flag, default in (("hidden", 256), ("layers", 4), ("heads", 4), ("kv-heads", 2), ("ffn", 768),
                          ("vocab", 8192)):
        p.add_argument(f"--{flag}", type=int, default=default, help=f"random-init Llama (default {default})")
    p.add_argument("--bucket-mb", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--transports", default="tensor,per_tensor,broadcast")
    p.add_argument("--json", default="")
    return p.parse_args(argv)


def _next_token_logprob(client) -> float:
    from megatron_sgpo.rollout.engine import SamplingParams

    return client.generate([[5, 6, 7]], [1], SamplingParams(temperature=0, max_new_tokens=1))[0][0].logprobs[0]


def measure_transport(client, kind: str, tensors: list, bucket_bytes: int, reps: int, vocab: int) -> dict:
    """GB/s of one full update over ``kind``, and the uniform-log-prob check of its correctness."""
    from megatron_sgpo.bench.throughput import timed_locally
    from megatron_sgpo.platform.dist import free_port
    from megatron_sgpo.weights.stage_tensors import buckets
    from megatron_sgpo.weights.tensor_handles import serialize_named_tensors

    if kind == "broadcast":
        client.weight_sync = "distributed"
        client.init_weights_update_group("127.0.0.1", free_port(), backend="gloo")
        tensors = [(n, t.cpu()) for n, t in tensors]
    else:
        client.weight_sync = "tensor"
    plan = list(buckets(tensors, bucket_bytes))
    version = iter(range(1000, 10**6))

    def post_per_tensor(bucket, v):
        items = [(n, t.detach().contiguous() if t.is_cuda else t.detach().clone()) for n, t in bucket]
        client.request("POST", "/update_weights_from_tensor", {
            "serialized_named_tensors": [serialize_named_tensors(items)], "weight_version": str(v),
            "flush_cache": False}, retry=False)

    def send(named_buckets):
        v = next(version)
        client.begin_weight_update(v)
        for bucket in named_buckets:
            if kind == "per_tensor":
                post_per_tensor(bucket, v)
            else:
                client.update_weights(bucket, v)
        client.end_weight_update(v)
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    zero_head = [[(n, torch.zeros_like(t)) if n == "lm_head.weight" else (n, t) for n, t in b] for b in plan]
    send(zero_head)
    uniform = abs(_next_token_logprob(client) + math.log(vocab)) < 1e-2
    secs = timed_locally(lambda: send(plan), 1, reps)
    restored = abs(_next_token_logprob(client) + math.log(vocab)) > 1e-2
    nbytes = sum(t.numel() * t.element_size() for _, t in tensors)
    med = statistics.median(secs)
    out = {"bytes": nbytes, "buckets": len(plan), "seconds_all": secs, "GBps": nbytes / med / 1e9,
           "GBps_best": nbytes / min(secs) / 1e9, "verified": bool(uniform and restored)}
    if kind == "tensor":
        out["bucket_ms"] = bucket_breakdown(client, plan, next(version))
    return out


def bucket_breakdown(client, plan, version: int) -> dict:
    """Where one flattened bucket's time goes (median over the buckets, ms): the sender's flatten and
    pickling, the whole HTTP request, and inside it the server's mapping of the handles and its load."""
    from megatron_sgpo.weights.tensor_handles import FLATTENED, flatten_bucket, serialize_handles
    from megatron_sgpo.weights.transports import staging_buffer

    rows, slot = [], {}  # one persistent buffer, as a sync with one bucket in flight uses
    client.begin_weight_update(version)
    for bucket in plan + plan:  # the first pass allocates (and faults in) the buffer, as a run's first sync does
        t0 = time.perf_counter()
        flat = flatten_bucket(bucket, lambda n, d: staging_buffer(slot, n, d))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        payload = serialize_handles(flat)
        t2 = time.perf_counter()
        reply = client.request("POST", "/update_weights_from_tensor", {
            "serialized_named_tensors": [payload], "load_format": FLATTENED, "weight_version": str(version),
            "flush_cache": False}, retry=False)
        t3 = time.perf_counter()
        mapped, loaded = (float(x) for x in re.findall(r"in ([0-9.]+) ms", reply.get("message", ""))[:2])
        rows.append({"flatten": t1 - t0, "pickle": t2 - t1, "request": t3 - t2, "server_map": mapped / 1e3,
                     "server_load": loaded / 1e3})
    client.end_weight_update(version)
    rows = rows[len(plan):]
    return {k: round(1e3 * statistics.median(r[k] for r in rows), 2) for k in rows[0]}


def main(argv=None) -> int:
    a = parse(argv)
    from megatron_sgpo.bench.throughput import copy_baseline, llama_config, save_random_hf
    from megatron_sgpo.model.hf_io import HFCheckpoint
    from megatron_sgpo.platform.dist import free_port
    from megatron_sgpo.rollout.launcher import SGLangLauncher
    from megatron_sgpo.rollout.sglang import SGLangClient

    cfg = llama_config(a.hidden, a.layers, a.heads, a.kv_heads, a.ffn, a.vocab)
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    with tempfile.TemporaryDirectory(prefix="transport-") as tmp:
        model_dir = save_random_hf(cfg, tmp, dtype)
        hf = HFCheckpoint(model_dir)
        tensors = [(n, hf[n].to(a.device)) for n in hf.names()]
        launcher = SGLangLauncher.sgpo(model_dir, free_port(), extra_args=[
            "--device", a.device, "--dtype", str(dtype).removeprefix("torch."), "--threads", "1"]).start()
        client = SGLangClient(launcher.url, launcher=launcher, timeout_s=300)
        try:
            report = {"device": a.device, "device_name": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
                      "dtype": str(dtype), "bucket_mb": a.bucket_mb, "reps": a.reps, "model": cfg,
                      "copy": copy_baseline([t for _, t in tensors], a.reps)}
            for kind in a.transports.split(","):
                report[kind] = measure_transport(client, kind, tensors, a.bucket_mb << 20, a.reps, a.vocab)
                report[kind]["ratio_to_copy"] = report[kind]["GBps"] / report["copy"]["GBps"]
        finally:
            client.close()
            launcher.stop()
    for kind in a.transports.split(","):
        r = report[kind]
        print(f"{kind:<9} {r['bytes'] / 1e6:.1f} MB in {r['buckets']} bucket(s): {r['GBps']:.3f} GB/s, "
              f"{r['ratio_to_copy']:.3f}x a plain copy ({report['copy']['GBps']:.3f} GB/s) on {report['device_name']}; "
              f"verified {r['verified']}")
        if "bucket_ms" in r:
            print(f"          per bucket (median ms): {r['bucket_ms']}")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if all(report[k]["verified"] for k in a.transports.split(",")) else 1


if __name__ == "__main__":
    sys.exit(main())
