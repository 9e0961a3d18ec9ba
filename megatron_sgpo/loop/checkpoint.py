"""Checkpoints of the full RL state in megatron's ``dist_checkpointing`` format, resumable on another layout.

``<output_dir>/checkpoints/step_<N>/``:
- ``dist/``: the model and the optimizer as megatron sharded state (``torch_dist``), so a run saved at one
  TP/PP/DP resumes at another: ShardedTensors hold global layer and vocab coordinates (the vocabulary is padded
  the same way at every TP), and the distributed optimizer's state is written ``fully_reshardable``. With the
  HF config, tokenizer and conversion metadata beside it, ``dist/`` is also a converted megatron checkpoint:
  ``model.megatron_path``, ``tools/convert_megatron_to_hf.py`` and ``sgpo export`` read it as one;
- ``state.json``: the RL state (plan and position, ledger, posteriors, evaluations), the LR schedule and the
  layout it was written at; ``rng/rank<R>.pt``: every RNG of every rank (Python, numpy, torch CPU and CUDA,
  megatron's TP tracker), restored only on the same layout (elsewhere the ranks are not the same ranks; the loop
  draws its own randomness from (run seed, step), so the trajectory does not depend on them);
- ``manifest.json``: the size and CRC32 of every file, checked before any byte is loaded, so a truncated or
  corrupted checkpoint fails naming the file instead of loading partially.
Written into ``step_<N>.tmp`` and renamed into place, ``latest`` updated last: a run killed at any moment resumes
from the last complete checkpoint. Only the newest ``keep`` checkpoints stay.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import zlib

import numpy as np
import torch
import torch.distributed as dist

# The distributed optimizer's state in the layout-free form (one tensor per parameter and Adam moment), gathered
# over gloo to DP rank 0 for the write instead of all-gathered to every rank: at 70B the default all-gather puts
# a model-parallel shard's whole fp32 Adam state (~50 GB) on every DP rank; on SmolLM2 (DP=2) it was also slower
# (save 27 s against 20 s, docs/benchmarks.md). Both variants load the same way.
OPTIMIZER_FORMAT = {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True,
                    "distrib_optim_fully_reshardable_mem_efficient": True}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as it is; the message names the file."""


def _dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _sharded(policy, is_loading: bool) -> dict:
    model = {f"chunk{i}": chunk.sharded_state_dict() for i, chunk in enumerate(policy.modules())}
    return {"model": model, "optimizer": policy.optimizer.sharded_state_dict(model, is_loading=is_loading,
                                                                             metadata=OPTIMIZER_FORMAT)}


def _ensure_optimizer_state(optimizer) -> None:
    """Give a never-stepped optimizer the state a loaded checkpoint will overwrite.

    Without apex/TE's fused Adam, megatron-core 0.16's DistributedOptimizer.state_dict() reads torch Adam's
    per-parameter ``step`` (distrib_optimizer.py:640-642), which exists only after a first step, and its loading
    template is built from that state_dict: a fresh run resuming from a checkpoint would fail. This creates what
    megatron's own ``init_state_fn`` creates (zeroed moments) plus torch Adam's step counter.
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is None or getattr(opt, "init_state_fn", None) is None:
            continue
        params = [p for group in inner.param_groups for p in group["params"]]
        if params and all(len(inner.state[p]) == 0 for p in params):
            opt.init_state_fn(inner, opt.config)
            for p in params:
                inner.state[p].setdefault("step", torch.tensor(0.0))


def _load_optimizer(optimizer, state: dict) -> None:
    """optimizer.load_state_dict, around two megatron-core 0.16 issues of a DistributedOptimizer over torch's Adam
    (no apex/TE fused Adam), which would otherwise fail or silently change the run after a resume:
    - it restores Adam's per-parameter ``step`` from the param groups (distrib_optimizer.py:817-825) but then copies
      every key of the live state, ``step`` included, from the loaded tensors, which lack it (``_set_main_param_
      and_optimizer_states``, :935-938): KeyError. A missing ``step`` is taken from the live state here;
    - it gives every parameter the *same* ``step`` tensor (:821-825), which torch's Adam then increments once per
      parameter at each step, so the bias correction drifts from the first step after a resume. Each parameter
      gets its own copy afterwards.
    """
    patched = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        setter = getattr(opt, "_set_main_param_and_optimizer_states", None)
        if setter is None:
            continue

        def keep_step(model_param, tensors, opt=opt, setter=setter):
            group_index, group_order = opt.model_param_group_index_map[model_param]
            live = opt.optimizer.state[opt.optimizer.param_groups[group_index]["params"][group_order]]
            if "step" in live and "step" not in tensors:
                tensors = {**tensors, "step": live["step"]}
            setter(model_param, tensors)

        opt._set_main_param_and_optimizer_states = keep_step
        patched.append(opt)
    try:
        optimizer.load_state_dict(state)
    finally:
        for opt in patched:
            del opt._set_main_param_and_optimizer_states
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        for param_state in (inner.state.values() if inner is not None else ()):
            if torch.is_tensor(param_state.get("step")):
                param_state["step"] = param_state["step"].clone()


def _layout(policy) -> dict:
    return {"tp": policy.layout.tp, "pp": policy.layout.pp, "vpp": policy.layout.vpp, "dp": policy.dp_size,
            "world": dist.get_world_size()}


def _rng_state() -> dict:
    from megatron.core import tensor_parallel

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}


def _set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _files(folder: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs
                  if f != "manifest.json")


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            crc = zlib.crc32(block, crc)
    return crc


def _shared(rows: list) -> list:
    """Every rank's ``rows``, concatenated (checksums are computed in parallel: rank r takes files r, r+W, ...)."""
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, rows)
    return [row for part in everyone for row in part]


def _write_manifest(folder: str) -> None:
    files = _files(folder)
    mine = [(name, os.path.getsize(os.path.join(folder, name)), _crc32(os.path.join(folder, name)))
            for name in files[dist.get_rank()::dist.get_world_size()]]
    rows = _shared(mine)
    if dist.get_rank() == 0:
        write_json_atomic(os.path.join(folder, "manifest.json"), {name: [size, crc] for name, size, crc in rows})


def verify(folder: str) -> None:
    """Raise CheckpointError on every rank when a file is missing, truncated or altered."""
    path = os.path.join(folder, "manifest.json")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is missing or unreadable ({exc}): the checkpoint is incomplete") from None
    names = sorted(manifest)
    problems = []
    for name in names[dist.get_rank()::dist.get_world_size()]:
        file = os.path.join(folder, name)
        size, crc = manifest[name]
        if not os.path.exists(file):
            problems.append(f"{file} is missing")
        elif os.path.getsize(file) != size:
            problems.append(f"{file} has {os.path.getsize(file)} bytes, the manifest says {size} (truncated?)")
        elif _crc32(file) != crc:
            problems.append(f"{file} does not match its checksum (corrupted)")
    problems = _shared(problems)
    if problems:
        raise CheckpointError(f"checkpoint {folder} cannot be loaded: " + "; ".join(problems[:3]))


def prepare_writer() -> None:
    """Call before the policy is built: megatron's checkpoint writer needs a helper process, best forked while
    the process is small (:func:`megatron_sgpo.model.convert.prepare_dist_checkpoint_writer`)."""
    from megatron_sgpo.model.convert import prepare_dist_checkpoint_writer

    prepare_dist_checkpoint_writer()


def policy_metadata(policy, hf_dir: str) -> dict:
    """The conversion metadata of ``policy``'s weights (vocab padding, dtypes), as the converter writes it."""
    from megatron_sgpo.model.convert import model_metadata

    dtype = "bf16" if policy.options.torch_dtype() == torch.bfloat16 else "fp32"
    return model_metadata(policy.hf_config, policy.options.make_vocab_size_divisible_by, dtype, hf_dir,
                          policy.layout)


def save(output_dir: str, step: int, policy, state: dict, hf_dir: str, keep: int = 2) -> str:
    """Write checkpoint ``step`` (collective: every rank calls it); keep the newest ``keep``.

    ``hf_dir``: the HF folder the run started from (its config and tokenizer files go beside the weights)."""
    from megatron.core import dist_checkpointing

    from megatron_sgpo.model.convert import write_metadata
    from megatron_sgpo.model.hf_io import copy_side_files

    root = _dir(output_dir)
    final = os.path.join(root, f"step_{step}")
    tmp = final + ".tmp"
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.join(tmp, "dist"))
        os.makedirs(os.path.join(tmp, "rng"))
    dist.barrier()
    prepare_writer()
    dist_checkpointing.save(_sharded(policy, is_loading=False), os.path.join(tmp, "dist"))
    with open(os.path.join(tmp, "rng", f"rank{rank}.pt"), "wb") as f:
        pickle.dump(_rng_state(), f)
    if rank == 0:
        copy_side_files(hf_dir, os.path.join(tmp, "dist"))
        write_metadata(os.path.join(tmp, "dist"), policy_metadata(policy, hf_dir))
        write_json_atomic(os.path.join(tmp, "state.json"), {**state, "scheduler": policy.scheduler.state_dict(),
                                                            "layout": _layout(policy)})
    dist.barrier()
    _write_manifest(tmp)
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_json_atomic(os.path.join(root, "latest"), {"step": step, "dir": os.path.basename(final)})
        done = sorted((int(n[5:]) for n in os.listdir(root) if n.startswith("step_") and n[5:].isdigit()))
        for old in done[:-keep]:
            shutil.rmtree(os.path.join(root, f"step_{old}"), ignore_errors=True)
    dist.barrier()
    return final


def latest(output_dir: str) -> str | None:
    """The newest complete checkpoint of the run in ``output_dir``, or None before the first one."""
    path = os.path.join(_dir(output_dir), "latest")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            found = os.path.join(_dir(output_dir), json.load(f)["dir"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}): point it at a checkpoint, e.g. "
                              f'{{"step": 5, "dir": "step_5"}}') from None
    if not os.path.isdir(found):
        raise CheckpointError(f"{path} names {found}, which does not exist: the run's checkpoints were moved or "
                              f"deleted (restore them, or remove {path} to start over)")
    return found


def find(output_dir: str, step: int | None = None) -> str:
    """Checkpoint ``step`` of the run in ``output_dir`` (default: the latest), or CheckpointError."""
    path = latest(output_dir) if step is None else os.path.join(_dir(output_dir), f"step_{step}")
    if path is None or not os.path.isdir(path):
        what = "no checkpoint" if step is None else f"no checkpoint of step {step}"
        raise CheckpointError(f"{_dir(output_dir)} holds {what}")
    return path


def model_dir(path: str) -> str:
    """The converted-checkpoint folder (weights, HF config, tokenizer) inside checkpoint ``path``."""
    return os.path.join(path, "dist")


def load(path: str, policy, model_only: bool = False) -> dict:
    """Restore this rank's share of the model (and optimizer, LR schedule, RNG) from ``path``, at any layout;
    return the RL state."""
    from megatron.core import dist_checkpointing

    verify(path)
    with open(os.path.join(path, "state.json")) as f:
        state = json.load(f)
    _ensure_optimizer_state(policy.optimizer)
    template = _sharded(policy, is_loading=True)
    if model_only:
        template = {"model": template["model"]}
    loaded = dist_checkpointing.load(template, os.path.join(path, "dist"))
    for i, chunk in enumerate(policy.modules()):
        chunk.load_state_dict(loaded["model"][f"chunk{i}"], strict=True)
    if model_only:
        policy.optimizer.reload_model_params()
        return state
    _load_optimizer(policy.optimizer, loaded["optimizer"])
    policy.scheduler.load_state_dict(state.pop("scheduler"))
    if state.pop("layout") == _layout(policy):
        with open(os.path.join(path, "rng", f"rank{dist.get_rank()}.pt"), "rb") as f:
            _set_rng_state(pickle.load(f))
    return state
