"""Run a worker script, or the ``sgpo`` CLI, under torchrun with N processes on CPU (gloo); read their outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import torch

from megatron_sgpo.platform.dist import free_port

WORKERS = os.path.join(os.path.dirname(__file__), "workers")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")


def sgpo_command(nproc: int, args: list[str]) -> list[str]:
    """``sgpo ARGS`` under torchrun with ``nproc`` ranks (run it with :data:`ENV`)."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
            f"--master-port={free_port()}", "-m", "megatron_sgpo.cli", *args]


def run_to_files(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
    """``subprocess.run`` with the output read back from files, not pipes: a CPU weight sync through shared-memory
    handles starts torch_shm_manager, which inherits the ranks' stdout and lives as long as an engine holds the
    memory, so a pipe would never reach its end."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run(cmd, stdout=out, stderr=err, text=True, timeout=timeout, env=ENV).returncode
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, code, out.read(), err.read())


def sgpo(nproc: int, args: list[str], expect_ok: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``sgpo ARGS``; with ``expect_ok``, raise with its output unless it succeeds."""
    proc = run_to_files(sgpo_command(nproc, args), timeout)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"sgpo {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc). torchrun starts each rank in a session of its own, so
    signalling the launcher's process group would leave the ranks running."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def signal_tree(pid: int, sig: int) -> None:
    """Send ``sig`` to a launched job: the launcher and every rank (parents first, so none restarts a child)."""
    for member in process_tree(pid):
        try:
            os.kill(member, sig)
        except ProcessLookupError:
            pass


def read_steps(out_dir: str) -> list[dict]:
    """The run's ``steps.jsonl`` rows, in the order written."""
    with open(os.path.join(out_dir, "steps.jsonl")) as f:
        return [json.loads(line) for line in f]


def torchrun(worker: str, nproc: int, args: list[str], timeout: int = 300) -> None:
    """Run ``tests/workers/<worker>`` with ``nproc`` ranks; raise with its output if it fails."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1", f"--master-port={free_port()}",
        os.path.join(WORKERS, worker), *args,
    ]
    proc = run_to_files(cmd, timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-8000:]}")


def load(out_dir: str, name: str):
    return torch.load(os.path.join(out_dir, name), weights_only=True)
