"""HF ⇄ megatron-core distributed checkpoint conversion, streamed tensor by tensor.

Why a megatron dist checkpoint: megatron reshards it on load, so one conversion serves every TP/PP.
The vocabulary is padded the project's TP-independent way (:func:`megatron_sgpo.model.hf_config.padded_vocab_size`,
a multiple of ``divisible_by × 8``), so the vocab tensors have one shape at every TP; the size is recorded in
``sgpo_conversion.json``. A model built with another ``divisible_by`` still loads: :func:`load_megatron_checkpoint`
re-pads the vocab rows (docs/conversion.md).

The functions expect :func:`megatron_sgpo.platform.dist.init_parallel` to have run with the same
``ParallelLayout``; every rank calls them. Output goes to a temp folder that rank 0 renames at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_sgpo.model.build import ModelOptions, build_model
from megatron_sgpo.model.hf_config import (MAX_PORTABLE_TP, family_of, load_hf_config, padded_vocab_size,
                                           validate_layout)
from megatron_sgpo.model.hf_io import SIDE_FILES, HFCheckpoint, ShardedWriter, copy_side_files
from megatron_sgpo.model.load import ReadRecorder, check_all_used, load_hf_weights, unwrap
from megatron_sgpo.model.mapping import WeightMapping, global_names
from megatron_sgpo.platform.dist import destroy_parallel, init_parallel
from megatron_sgpo.platform.layout import ParallelLayout

META = "sgpo_conversion.json"
VOCAB_KEYS = ("embedding.word_embeddings.weight", "output_layer.weight")
_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp32"}  # fp16 is held as fp32 (lossless)


@dataclass
class Summary:
    """What a conversion wrote; printed by the tools and used for the benchmark figures."""

    direction: str
    tensors: int
    bytes: int
    seconds: float
    out_dir: str

    @property
    def gbps(self) -> float:
        return self.bytes / 1e9 / max(self.seconds, 1e-9)

    def line(self) -> str:
        return (f"{self.direction}: wrote {self.tensors} tensors, {self.bytes / 1e9:.3f} GB in {self.seconds:.1f} s "
                f"({self.gbps:.3f} GB/s) to {self.out_dir}")


def read_metadata(ckpt_dir: str) -> dict:
    path = os.path.join(ckpt_dir, META)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: {ckpt_dir} was not written by convert_hf_to_megatron")
    with open(path) as f:
        return json.load(f)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", disable=not progress or _rank() != 0)


def _agree(error: BaseException | None) -> None:
    """Collective: raise on every rank if any rank failed, so no rank waits forever in a later collective."""
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, None if error is None else f"{type(error).__name__}: {error}")
    failed = [(r, e) for r, e in enumerate(errors) if e]
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(f"rank {failed[0][0]} failed: {failed[0][1]}")


def _check_layout(layout: ParallelLayout) -> None:
    """The parallel state must match the requested layout (extra ranks are data-parallel replicas)."""
    from megatron.core import parallel_state as ps

    have = (ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size())
    if have != (layout.tp, layout.pp):
        raise RuntimeError(f"parallel state is tp,pp={have}, conversion asked for {(layout.tp, layout.pp)}")


class _OutputDir:
    """Temp folder beside ``final`` shared by all ranks; rank 0 renames it at the end or removes it on failure."""

    def __init__(self, final: str, overwrite: bool):
        self.final = os.path.abspath(final)
        self.tmp, err = None, None
        if _rank() == 0:
            try:
                if os.path.exists(self.final) and not overwrite:
                    raise FileExistsError(f"output {self.final} already exists (pass --overwrite to replace it)")
                os.makedirs(os.path.dirname(self.final), exist_ok=True)
                self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.final)}.tmp-", dir=os.path.dirname(self.final))
            except OSError as exc:
                err = exc
        box = [self.tmp, None if err is None else str(err)]
        dist.broadcast_object_list(box, src=0)
        self.tmp = box[0]
        if box[1]:
            raise FileExistsError(box[1]) if err is None else err

    def commit(self) -> None:
        dist.barrier()
        if _rank() == 0:
            if os.path.exists(self.final):
                shutil.rmtree(self.final)
            os.chmod(self.tmp, 0o755)  # mkdtemp makes it private
            os.replace(self.tmp, self.final)
        dist.barrier()

    def abort(self) -> None:
        if _rank() == 0 and self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _hf_dtype(cfg: dict) -> str:
    return str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32").replace("torch.", "")


def hf_to_megatron(hf_dir: str, out_dir: str, layout: ParallelLayout = ParallelLayout(), divisible_by: int = 128,
                   overwrite: bool = False, progress: bool = True) -> Summary:
    """Convert an HF safetensors folder into a megatron dist checkpoint loadable at any TP ≤ 8 and any PP.

    Each rank builds only its own TP/PP part of the model and reads only the HF tensors it needs.
    """
    t0 = time.time()
    hf = HFCheckpoint(hf_dir)  # refuses pickles, names missing shards
    cfg = hf.config
    try:
        family = family_of(cfg)
        validate_layout(cfg, layout)
    except ValueError as exc:
        raise ValueError(f"{os.path.join(hf_dir, 'config.json')}: {exc}") from None
    _check_layout(layout)
    import megatron.core
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    padded = padded_vocab_size(cfg["vocab_size"], divisible_by, layout.tp)
    hf_dtype = _hf_dtype(cfg)
    options = ModelOptions(make_vocab_size_divisible_by=divisible_by, init_weights=False,
                           dtype=_DTYPES.get(hf_dtype, "fp32"))
    out = _OutputDir(out_dir, overwrite)
    try:
        error = None
        try:
            chunks = build_model(cfg, layout, options)
            mapping = WeightMapping(cfg, layout.tp, options.make_vocab_size_divisible_by)
            n_reads = sum(len(mapping.rule(n).hf_names) for c in chunks for n in global_names(unwrap(c)).values())
            with _bar(n_reads, "HF -> megatron (rank 0)", progress) as bar:
                reader = ReadRecorder(hf, on_read=lambda: bar.update(1))
                load_hf_weights(chunks, reader, mapping, ps.get_tensor_model_parallel_rank())
        except Exception as exc:  # agreed below so every rank stops
            error = exc
        _agree(error)
        check_all_used(hf, reader.read, mapping.tied)
        sharded = unwrap(chunks[0]).sharded_state_dict()
        _cheap_write_queue()
        dist_checkpointing.save(sharded, out.tmp)
        keys = [None] * dist.get_world_size()
        dist.all_gather_object(keys, sorted({v.key for v in sharded.values() if hasattr(v, "key")}))
        if _rank() == 0:
            copy_side_files(hf_dir, out.tmp)
            meta = {"family": family.name, "source": os.path.abspath(hf_dir), "vocab_size": cfg["vocab_size"],
                    "padded_vocab_size": padded, "make_vocab_size_divisible_by": divisible_by,
                    "max_tp": MAX_PORTABLE_TP, "dtype": options.dtype, "hf_dtype": hf_dtype,
                    "written_at": {"tp": layout.tp, "pp": layout.pp}, "megatron_core": megatron.core.__version__}
            with open(os.path.join(out.tmp, META), "w") as f:
                json.dump(meta, f, indent=2)
        nbytes = _folder_bytes(out.tmp) if _rank() == 0 else 0
        out.commit()
    except BaseException:
        out.abort()
        raise
    return Summary("HF -> megatron", len(set().union(*map(set, keys))), nbytes, time.time() - t0, out.final)


def _cheap_write_queue() -> None:
    """Pre-create megatron's write-results queue from a forked manager.

    megatron makes it with a *spawn* manager, which re-imports the caller's main module (seconds when that
    imports torch and megatron, measured 6 s of a 10 s SmolLM2 save); a fork is instant. Skipped if it exists.
    """
    import multiprocessing as mp

    try:
        from megatron.core.dist_checkpointing.strategies import filesystem_async as fa
    except ImportError:
        return
    if getattr(fa, "_results_queue", False) is None:
        fa._results_queue = mp.get_context("fork").Manager().Queue()


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _full_read(st, padded: int):
    """Replace a vocab ShardedTensor by a read of the checkpoint's whole (padded, ...) tensor on this rank."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing import ShardedTensor

    tp_rank = ps.get_tensor_model_parallel_rank()
    rid = st.replica_id if isinstance(st.replica_id, tuple) else (st.replica_id,)
    buffer = torch.empty((padded, *st.data.shape[1:]), dtype=st.data.dtype)
    return ShardedTensor.from_rank_offsets(st.key, buffer, replica_id=(rid[0], tp_rank, *rid[1:]))


def load_megatron_checkpoint(chunks, ckpt_dir: str) -> dict:
    """Load a converted checkpoint into this rank's model chunks (any TP/PP); return its metadata.

    Models built with the checkpoint's ``make_vocab_size_divisible_by`` read only their own vocab rows;
    any other padding reads the whole vocab tensors once and re-pads them (more memory, same result).
    """
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing import ShardedTensor

    meta = read_metadata(ckpt_dir)
    padded, vocab = meta["padded_vocab_size"], meta["vocab_size"]
    tp, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    for chunk in chunks:
        model = unwrap(chunk)
        sharded = model.sharded_state_dict()  # local and TE specs share keys (megatron maps the norm names)
        repad = {}
        for name, st in list(sharded.items()):
            if isinstance(st, ShardedTensor) and st.key in VOCAB_KEYS and st.global_shape[0] != padded:
                if st.data.shape[0] * tp < vocab:
                    raise ValueError(f"model vocab {st.data.shape[0] * tp} rows < checkpoint vocab_size {vocab}")
                repad[name] = st.data.shape[0]
                sharded[name] = _full_read(st, padded)
        state = dist_checkpointing.load(sharded, ckpt_dir)
        for name, rows in repad.items():
            full, start = state[name], tp_rank * rows
            local = full.new_zeros((rows, *full.shape[1:]))
            real = max(0, min(rows, vocab - start))
            local[:real] = full[start:start + real]
            state[name] = local
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        if missing or unexpected:
            raise ValueError(f"checkpoint {ckpt_dir} does not fit the model: missing {missing}, unexpected {unexpected}")
    return meta


def _export_order(name: str) -> tuple:
    """HF-like order: embedding, layers by index, final norm, output layer."""
    if name.startswith("decoder.layers."):
        return (1, int(name.split(".")[2]), name)
    return ({"embedding.word_embeddings.weight": 0, "decoder.final_layernorm.weight": 2}.get(name, 3), 0, name)


def megatron_to_hf(ckpt_dir: str, out_dir: str, layout: ParallelLayout = ParallelLayout(),
                   max_shard_bytes: int = 5 * 10**9, overwrite: bool = False, progress: bool = True) -> Summary:
    """Convert a converted megatron checkpoint back to an HF safetensors folder that transformers loads.

    Every rank loads its part; TP shards are all-gathered one parameter at a time and other pipeline
    stages send theirs to rank 0, which alone writes (memory: one parameter plus one output shard).
    """
    from megatron.core import parallel_state as ps

    t0 = time.time()
    meta = read_metadata(ckpt_dir)
    cfg = load_hf_config(ckpt_dir)
    validate_layout(cfg, layout)
    _check_layout(layout)
    divisor = meta["make_vocab_size_divisible_by"]
    options = ModelOptions(make_vocab_size_divisible_by=divisor, dtype=meta["dtype"], init_weights=False)
    hf_dtype = getattr(torch, meta.get("hf_dtype", "float32"))
    out = _OutputDir(out_dir, overwrite)
    try:
        error, params = None, {}
        try:
            chunks = build_model(cfg, layout, options)
            load_megatron_checkpoint(chunks, ckpt_dir)
            mapping = WeightMapping(cfg, layout.tp, divisor)
            for chunk in chunks:
                model = unwrap(chunk)
                named = dict(model.named_parameters())
                for local, name in global_names(model).items():
                    if not (name == "output_layer.weight" and mapping.tied):  # the embedding is written once
                        params[name] = named[local].detach()
        except Exception as exc:
            error = exc
        _agree(error)
        tp_rank, pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
        first_replica = ps.get_data_parallel_rank() == 0  # data-parallel replicas hold copies: skip them
        listing = [None] * dist.get_world_size()
        mine = [(n, tuple(p.shape), str(p.dtype)) for n, p in params.items()] if tp_rank == 0 and first_replica else []
        dist.all_gather_object(listing, (dist.get_rank(), pp_rank, mine))
        plan = sorted(((n, shape, dt, src, pp) for src, pp, items in listing for n, shape, dt in items),
                      key=lambda x: _export_order(x[0]))
        writer = ShardedWriter(out.tmp, max_shard_bytes) if _rank() == 0 else None
        tp_group = ps.get_tensor_model_parallel_group()
        with _bar(len(plan), "megatron -> HF", progress) as bar:
            for name, shape, dt, src, pp in plan:
                shards = None
                if pp == pp_rank and first_replica:
                    local = params[name].contiguous()
                    shards = [torch.empty_like(local) for _ in range(layout.tp)]
                    dist.all_gather(shards, local, group=tp_group)
                if pp != 0 and _rank() in (0, src):
                    if _rank() == src:
                        for s in shards:
                            dist.send(s, dst=0)
                    else:
                        shards = [torch.empty(shape, dtype=getattr(torch, dt.split(".")[1])) for _ in range(layout.tp)]
                        for s in shards:
                            dist.recv(s, src=src)
                if writer is not None:
                    for hf_name, tensor in mapping.to_hf(name, shards):
                        writer.add(hf_name, tensor.to(hf_dtype))
                bar.update(1)
        nbytes = 0
        if writer is not None:
            writer.close()
            nbytes = writer.total_bytes
            for side in SIDE_FILES:
                if os.path.exists(os.path.join(ckpt_dir, side)):
                    shutil.copy2(os.path.join(ckpt_dir, side), os.path.join(out.tmp, side))
        out.commit()
    except BaseException:
        out.abort()
        raise
    return Summary("megatron -> HF", len(writer.weight_map) if writer else 0, nbytes, time.time() - t0, out.final)


def run_tool(tool: str, layout: ParallelLayout, convert) -> int:
    """Body of the converter tools: set up the ranks, convert, print the summary or one error line."""
    init_parallel(layout)
    try:
        summary = convert()
    except Exception as exc:  # a tool reports any failure as one line and exit status 1
        print(f"{tool}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        destroy_parallel()
    if summary.bytes:
        print(summary.line())
    return 0
