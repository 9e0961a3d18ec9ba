"""Run a worker script under torchrun with N processes on CPU (gloo) and collect its outputs."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

from megatron_sgpo.platform.dist import free_port

WORKERS = os.path.join(os.path.dirname(__file__), "workers")


def torchrun(worker: str, nproc: int, args: list[str], timeout: int = 300) -> None:
    """Run ``tests/workers/<worker>`` with ``nproc`` ranks; raise with its output if it fails."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1", f"--master-port={free_port()}",
        os.path.join(WORKERS, worker), *args,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")


def load(out_dir: str, name: str):
    return torch.load(os.path.join(out_dir, name), weights_only=True)
