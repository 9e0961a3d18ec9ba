"""torch.distributed and megatron ``parallel_state`` set-up from torchrun's environment.

One entry point, :func:`init_parallel`, used by training, conversion tools, tests and benchmarks:
NCCL on GPU, gloo on CPU (which also switches on :mod:`megatron_sgpo.platform.cpu`). A plain
``python`` process (no torchrun variables) becomes a world of one.
"""
from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist

from megatron_sgpo.platform import cpu
from megatron_sgpo.platform.layout import ParallelLayout


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for single-process runs and tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device() -> torch.device:
    """The device this rank computes on: its local GPU, or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_parallel(layout: ParallelLayout, seed: int = 1234, timeout_minutes: int = 10) -> int:
    """Initialise the process group and megatron's parallel state; return the DP size.

    Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT as torchrun sets them.
    """
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dp = layout.data_parallel_size(world_size)
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    else:
        cpu.enable()
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            if world_size > 1:
                raise RuntimeError("MASTER_PORT is not set: launch multi-process runs with torchrun")
            os.environ["MASTER_PORT"] = str(free_port())
        dist.init_process_group(
            # on GPU, NCCL for CUDA tensors and gloo for the CPU tensors of weight sync and object broadcasts
            backend="cpu:gloo,cuda:nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    from megatron.core import parallel_state, tensor_parallel

    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=layout.tp,
            pipeline_model_parallel_size=layout.pp,
            virtual_pipeline_model_parallel_size=layout.vpp,
            context_parallel_size=layout.cp,
        )
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return dp


def destroy_parallel() -> None:
    """Tear down megatron's groups and the process group (tests run several layouts in one process)."""
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_errors(error: BaseException | None) -> list[tuple[int, str]]:
    """Collective: (rank, "Type: message") of every rank whose ``error`` is set, so all ranks can take the same
    branch after work that may fail on some of them."""
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, None if error is None else f"{type(error).__name__}: {error}")
    return [(r, e) for r, e in enumerate(everyone) if e]


class RankZeroError(RuntimeError):
    """Work that runs on global rank 0 only (profiling, rollout, evaluation) failed; every rank raises it."""


def run_on_rank0(what: str, fn):
    """Run ``fn`` on global rank 0 and broadcast its result, or its error, so no rank waits forever."""
    payload = None
    if dist.get_rank() == 0:
        try:
            payload = ("ok", fn())
        except Exception as exc:  # re-raised on every rank below, with the original message
            payload = ("error", f"{type(exc).__name__}: {exc}")
    box = [payload]
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise RankZeroError(f"{what} failed: {value}")
    return value
