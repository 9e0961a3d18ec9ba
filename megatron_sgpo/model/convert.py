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
from megatron_sgpo.model.hf_config import MAX_PORTABLE_TP, family_of, load_hf_config, padded_vocab_size, validate_layout
from megatron_sgpo.model.hf_io import HFCheckpoint, copy_side_files
from megatron_sgpo.model.load import ReadRecorder, check_all_used, load_hf_weights, unwrap
from megatron_sgpo.model.mapping import WeightMapping, global_names
from megatron_sgpo.platform.dist import destroy_parallel, init_parallel, rank_errors
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


def model_metadata(cfg: dict, divisible_by: int, dtype: str, source: str, layout: ParallelLayout) -> dict:
    """What a megatron checkpoint of this model records beside its weights (read back by the loaders)."""
    import megatron.core

    return {"family": family_of(cfg).name, "source": os.path.abspath(source), "vocab_size": cfg["vocab_size"],
            "padded_vocab_size": padded_vocab_size(cfg["vocab_size"], divisible_by, layout.tp),
            "make_vocab_size_divisible_by": divisible_by, "max_tp": MAX_PORTABLE_TP, "dtype": dtype,
            "hf_dtype": _hf_dtype(cfg), "written_at": {"tp": layout.tp, "pp": layout.pp},
            "megatron_core": megatron.core.__version__}


def write_metadata(ckpt_dir: str, meta: dict) -> None:
    with open(os.path.join(ckpt_dir, META), "w") as f:
        json.dump(meta, f, indent=2)


def read_metadata(ckpt_dir: str) -> dict:
    path = os.path.join(ckpt_dir, META)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: {ckpt_dir} was not written by convert_hf_to_megatron")
    with open(path) as f:
        return json.load(f)


def global_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def progress_bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", disable=not progress or global_rank() != 0)


def agree_all_ranks(error: BaseException | None) -> None:
    """Collective: raise on every rank if any rank failed, so no rank waits forever in a later collective."""
    failed = rank_errors(error)
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


class OutputDir:
    """Temp folder beside ``final`` shared by all ranks; rank 0 renames it at the end or removes it on failure."""

    def __init__(self, final: str, overwrite: bool):
        self.final = os.path.abspath(final)
        self.tmp, err = None, None
        if global_rank() == 0:
            try:
                if os.path.exists(self.final) and not overwrite:
                    raise FileExistsError(f"output {self.final} already exists (pass --overwrite to replace it)")
                os.makedirs(os.path.dirname(self.final), exist_ok=True)
                self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.final)}.tmp-",
                                            dir=os.path.dirname(self.final))
            except OSError as exc:
                err = exc
        box = [self.tmp, None if err is None else str(err)]
        dist.broadcast_object_list(box, src=0)
        self.tmp = box[0]
        if box[1]:
            raise FileExistsError(box[1]) if err is None else err

    def commit(self) -> None:
        dist.barrier()
        if global_rank() == 0:
            if os.path.exists(self.final):
                shutil.rmtree(self.final)
            os.chmod(self.tmp, 0o755)  # mkdtemp makes it private
            os.replace(self.tmp, self.final)
        dist.barrier()

    def abort(self) -> None:
        if global_rank() == 0 and self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _hf_dtype(cfg: dict) -> str:
    return str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32").replace("torch.", "")


def hf_to_megatron(hf_dir: str, out_dir: str, layout: ParallelLayout = ParallelLayout(), divisible_by: int = 128,
                   overwrite: bool = False, progress: bool = True) -> Summary:
    """Convert an HF safetensors folder into a megatron dist checkpoint loadable at any TP ≤ 8 and any PP.

    Each rank builds only its own TP/PP part of the model and reads only the HF tensors it needs.
    """
    t0 = time.time()
    prepare_dist_checkpoint_writer()  # before the model exists (see there)
    hf = HFCheckpoint(hf_dir)  # refuses pickles, names missing shards
    cfg = hf.config
    try:
        family_of(cfg)
        validate_layout(cfg, layout)
    except ValueError as exc:
        raise ValueError(f"{os.path.join(hf_dir, 'config.json')}: {exc}") from None
    _check_layout(layout)
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    options = ModelOptions(make_vocab_size_divisible_by=divisible_by, init_weights=False,
                           dtype=_DTYPES.get(_hf_dtype(cfg), "fp32"))
    out = OutputDir(out_dir, overwrite)
    try:
        error = None
        try:
            chunks = build_model(cfg, layout, options)
            mapping = WeightMapping(cfg, layout.tp, options.make_vocab_size_divisible_by)
            n_reads = sum(len(mapping.rule(n).hf_names) for c in chunks for n in global_names(unwrap(c)).values())
            with progress_bar(n_reads, "HF -> megatron (rank 0)", progress) as bar:
                reader = ReadRecorder(hf, on_read=lambda: bar.update(1))
                load_hf_weights(chunks, reader, mapping, ps.get_tensor_model_parallel_rank())
        except Exception as exc:  # agreed below so every rank stops
            error = exc
        agree_all_ranks(error)
        check_all_used(hf, reader.read, mapping.tied)
        sharded = unwrap(chunks[0]).sharded_state_dict()
        dist_checkpointing.save(sharded, out.tmp)
        keys = [None] * dist.get_world_size()
        dist.all_gather_object(keys, sorted({v.key for v in sharded.values() if hasattr(v, "key")}))
        if global_rank() == 0:
            copy_side_files(hf_dir, out.tmp)
            write_metadata(out.tmp, model_metadata(cfg, divisible_by, options.dtype, hf_dir, layout))
        nbytes = _folder_bytes(out.tmp) if global_rank() == 0 else 0
        out.commit()
    except BaseException:
        out.abort()
        raise
    return Summary("HF -> megatron", len(set().union(*map(set, keys))), nbytes, time.time() - t0, out.final)


def prepare_dist_checkpoint_writer() -> None:
    """Pre-create megatron's write-results queue from a forked manager; call it early, while the process is small.

    megatron makes it with a *spawn* manager, which re-imports the caller's main module (seconds when that
    imports torch and megatron, measured 6 s of a 10 s SmolLM2 save); a fork is instant. The manager lives as
    long as the process and keeps the memory pages of the moment it was forked (each page the parent writes
    later is copied), so it must be forked before the model and optimizer exist: forked after a first update,
    it doubled a DP rank's memory. Skipped if the queue exists.
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
        # only this model's entries: a run checkpoint's common state also holds the optimizer's
        state = {k: v for k, v in dist_checkpointing.load(sharded, ckpt_dir).items() if k in sharded}
        for name, rows in repad.items():
            full, start = state[name], tp_rank * rows
            local = full.new_zeros((rows, *full.shape[1:]))
            real = max(0, min(rows, vocab - start))
            local[:real] = full[start:start + real]
            state[name] = local
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        if missing or unexpected:
            raise ValueError(f"checkpoint {ckpt_dir} does not fit the model: missing {missing}, "
                             f"unexpected {unexpected}")
    return meta


def megatron_to_hf(ckpt_dir: str, out_dir: str, layout: ParallelLayout = ParallelLayout(),
                   max_shard_bytes: int = 5 * 10**9, overwrite: bool = False, progress: bool = True) -> Summary:
    """Convert a megatron checkpoint (converted, or a run checkpoint's ``dist/``) back to an HF safetensors folder
    that transformers loads. Every rank loads its part; :func:`megatron_sgpo.model.export.write_hf` writes."""
    from megatron_sgpo.model.export import write_hf

    t0 = time.time()
    meta = read_metadata(ckpt_dir)
    cfg = load_hf_config(ckpt_dir)
    validate_layout(cfg, layout)
    _check_layout(layout)
    options = ModelOptions(make_vocab_size_divisible_by=meta["make_vocab_size_divisible_by"], dtype=meta["dtype"],
                           init_weights=False)
    error, chunks = None, None
    try:
        chunks = build_model(cfg, layout, options)
        load_megatron_checkpoint(chunks, ckpt_dir)
    except Exception as exc:
        error = exc
    agree_all_ranks(error)
    return write_hf(chunks, cfg, layout, meta, ckpt_dir, out_dir, max_shard_bytes, overwrite,
                    progress, t0)


def add_export_arguments(parser) -> None:
    """The layout and output options shared by the megatron → HF commands (the converter and ``sgpo export``)."""
    from megatron_sgpo.model.hf_io import parse_size

    parser.add_argument("--tp", type=int, default=1, help="tensor parallel size to load at (world = tp * pp)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline parallel size to load at")
    parser.add_argument("--max-shard-size", type=parse_size, default=parse_size("5GB"))
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    parser.add_argument("--no-progress", action="store_true")


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
