"""The whole weight sync — megatron policy under torchrun → engine servers — per transport, at PP=1 and PP=2,
against a plain copy of the same bytes, in one run.

The driver starts ``--engines`` `sgpo serve` processes on the model (one generation thread each; a weight update
copies on every core, the trainer waiting meanwhile), then runs this file under torchrun once per pipeline size;
each rank loads the policy, and every transport's ``WeightSync.push`` is timed (one warm-up, then ``--reps``,
median; all ranks aligned by barriers). At PP=2 both stages' senders send at once. The baseline is ``copy_`` of
the model's HF tensors in the driver process (same bytes, same device, default threads), measured before and after
the runs (their mean is the figure). Engines hold the synced weights afterwards; their weight version is checked
after every push.

    python benchmarks/weight_sync_speed.py --model /tmp/smollm2 [--engines 1] [--pp 1 2] [--reps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF folder")
    p.add_argument("--engines", type=int, default=1)
    p.add_argument("--pp", type=int, nargs="+", default=[1, 2])
    p.add_argument("--transports", nargs="+", default=["tensor", "distributed", "disk"])
    p.add_argument("--bucket-mb", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--urls", nargs="*", default=[], help=argparse.SUPPRESS)  # worker mode
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(a) -> None:
    """One torchrun rank: policy at PP=WORLD_SIZE, a WeightSync per transport, timed pushes."""
    import torch
    import torch.distributed as dist

    from megatron_sgpo.config import RolloutSection
    from megatron_sgpo.model.hf_io import HFCheckpoint
    from megatron_sgpo.model.mapping import WeightMapping
    from megatron_sgpo.platform.dist import destroy_parallel, init_parallel
    from megatron_sgpo.platform.layout import ParallelLayout
    from megatron_sgpo.rollout.fleet import EngineFleet
    from megatron_sgpo.train.policy import Policy
    from megatron_sgpo.weights.sync import WeightSync

    torch.set_num_threads(1)
    pp = int(os.environ.get("WORLD_SIZE", "1"))
    layout = ParallelLayout(pp=pp)
    dp = init_parallel(layout)
    ckpt = HFCheckpoint(a.model)
    policy = Policy(ckpt.config, layout, dp)
    policy.load_hf(ckpt)
    rank = dist.get_rank()
    fleet = EngineFleet.from_config(RolloutSection(engine="serve", urls=tuple(a.urls)), a.model) if rank == 0 else None
    version, report = 0, {}
    with tempfile.TemporaryDirectory(prefix="sync-disk-") as disk:
        for transport in a.transports:
            sync = WeightSync(policy.modules(), WeightMapping(ckpt.config, 1), fleet, transport, a.bucket_mb << 20,
                              disk_dir=disk, side_dir=a.model)
            secs, sent = [], {}
            for rep in range(a.reps + 1):
                version += 1
                dist.barrier()
                t0 = time.perf_counter()
                sent = sync.push(version)
                dist.barrier()
                if rep:  # the first push warms up (connections, shared-memory manager, page faults)
                    secs.append(time.perf_counter() - t0)
            sync.close()
            counts = [None] * dist.get_world_size()
            dist.all_gather_object(counts, sent["bytes"])
            report[transport] = {"seconds_all": secs, "seconds": statistics.median(secs), "bytes": sum(counts),
                                 "bytes_per_sender": counts}
    if rank == 0:
        fleet.close()
        with open(a.out, "w") as f:
            json.dump(report, f)
    destroy_parallel()


def copy_seconds(model: str, reps: int) -> tuple[float, int]:
    """Median seconds and bytes of copy_ over the model's tensors (the baseline)."""
    from megatron_sgpo.bench.throughput import copy_baseline
    from megatron_sgpo.model.hf_io import HFCheckpoint

    hf = HFCheckpoint(model)
    base = copy_baseline([hf[n] for n in hf.names()], reps)
    return base["bytes"] / base["GBps"] / 1e9, base["bytes"]


def main(argv=None) -> int:
    a = parse(argv)
    if a.out:
        worker(a)
        return 0
    from megatron_sgpo.platform.dist import free_port
    from megatron_sgpo.rollout.launcher import SGLangLauncher

    launchers = [SGLangLauncher.sgpo(a.model, free_port(), extra_args=["--threads", "1"]).start(wait=False)
                 for _ in range(a.engines)]
    results = {}
    try:
        for launcher in launchers:
            launcher.wait_healthy(300)
        before, copy_bytes = copy_seconds(a.model, a.reps)
        for pp in a.pp:
            with tempfile.NamedTemporaryFile(suffix=".json") as out, tempfile.TemporaryFile("w+") as log:
                cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={pp}",
                       "--master-addr=127.0.0.1", f"--master-port={free_port()}", os.path.abspath(__file__),
                       "--model", a.model, "--transports", *a.transports, "--bucket-mb", str(a.bucket_mb),
                       "--reps", str(a.reps), "--urls", *[x.url for x in launchers], "--out", out.name]
                env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
                if subprocess.run(cmd, stdout=log, stderr=log, env=env).returncode != 0:
                    log.seek(0)
                    raise SystemExit(f"PP={pp} run failed:\n{log.read()[-4000:]}")
                results[pp] = json.load(open(out.name))
        after, _ = copy_seconds(a.model, a.reps)  # the machine's speed drifts: the baseline brackets the runs
        copy_s = (before + after) / 2
    finally:
        for launcher in launchers:
            launcher.stop()
    print(f"plain copy: {copy_bytes / 1e6:.1f} MB in {copy_s * 1e3:.1f} ms (before the runs {before * 1e3:.1f}, "
          f"after {after * 1e3:.1f}) = {copy_bytes / copy_s / 1e9:.2f} GB/s; "
          f"{a.engines} engine(s), bucket {a.bucket_mb} MB, median of {a.reps}")
    print("| transport | PP | seconds | GB/s per engine | × plain copy | PP=2 vs PP=1 |")
    print("|---|---|---|---|---|---|")
    for transport in a.transports:
        for pp in a.pp:
            r = results[pp][transport]
            gbps = r["bytes"] / r["seconds"] / 1e9
            speedup = results[a.pp[0]][transport]["seconds"] / r["seconds"]
            vs_copy = gbps / (copy_bytes / copy_s / 1e9)
            print(f"| {transport} | {pp} | {r['seconds']:.3f} | {gbps:.3f} | {vs_copy:.3f} | {speedup:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
