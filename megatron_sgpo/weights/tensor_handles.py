"""SGLang's `serialized_named_tensors` wire format: base64 of a ForkingPickler dump.

ForkingPickler pickles a tensor as a handle to shared memory, not its bytes: a CUDA IPC
handle on GPU, and — with torch's "file_system" sharing strategy — the name of a
shared-memory file on CPU. The receiver maps the same memory, so a colocated update moves
no tensor data through HTTP. The sender must keep its tensors alive until the receiver has
answered (an HTTP round trip guarantees it).

Two payloads: a list of (name, tensor) pairs (``load_format`` unset), one handle per tensor; and
SGLang's ``load_format="flattened_bucket"``, a dict of one flat byte buffer and per-tensor metadata
(:func:`flatten_bucket`), one handle per bucket: the weight sync's format. The receiver then maps one
CUDA IPC handle (or one shared-memory file) per bucket instead of one per tensor.

The receiving side unpickles with an allow-list of torch rebuild functions and types only.
"""
from __future__ import annotations

import base64
import io
import pickle
from multiprocessing.reduction import ForkingPickler
from types import SimpleNamespace
from typing import Callable

import torch
import torch.multiprocessing as tmp


def use_file_system_sharing() -> None:
    """CPU tensors pickled by ForkingPickler become openable by another process."""
    if tmp.get_sharing_strategy() != "file_system":
        tmp.set_sharing_strategy("file_system")


FLAT_ALIGN = 64  # byte offset of every tensor in a flattened bucket, so each can be viewed as its dtype
FLATTENED = "flattened_bucket"


def serialize_handles(obj) -> str:
    """base64 str, as SGLang's MultiprocessingSerializer(output_str=True); the tensors in ``obj`` must stay
    alive until the receiver has answered."""
    use_file_system_sharing()
    import torch.multiprocessing.reductions  # noqa: F401  registers the tensor reducers

    buf = io.BytesIO()
    ForkingPickler(buf).dump(obj)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def serialize_named_tensors(named_tensors) -> str:
    """[(name, tensor), ...] → one handle per tensor."""
    return serialize_handles([(str(n), t.detach()) for n, t in named_tensors])


def flatten_bucket(named_tensors, buffer: Callable[[int, torch.device], torch.Tensor] | None = None) -> dict:
    """Copy a bucket into one byte buffer on its device, with SGLang's per-tensor metadata (name, shape,
    dtype, start_idx, end_idx, numel in bytes); SimpleNamespace passes SGLang's unpickling allow-list.
    ``buffer(nbytes, device)`` gives the 1-D uint8 buffer to fill (a new one by default)."""
    items = [(str(n), t.detach()) for n, t in named_tensors]
    if not items or len({t.device for _, t in items}) != 1:
        raise ValueError("a flattened bucket needs at least one tensor, all on one device")
    meta, offset = [], 0
    for name, t in items:
        start = -(-offset // FLAT_ALIGN) * FLAT_ALIGN
        offset = start + t.numel() * t.element_size()
        meta.append(SimpleNamespace(name=name, shape=t.shape, dtype=t.dtype, start_idx=start, end_idx=offset,
                                    numel=offset - start))
    device = items[0][1].device
    flat = buffer(offset, device) if buffer is not None else torch.empty(offset, dtype=torch.uint8, device=device)
    if flat.dtype != torch.uint8 or flat.shape != (offset,) or flat.device != device:
        raise ValueError(f"a bucket of {offset} bytes on {device} needs a uint8 buffer of that size there, got "
                         f"{flat.dtype} {tuple(flat.shape)} on {flat.device}")
    for m, (_, t) in zip(meta, items):
        flat[m.start_idx:m.end_idx].view(t.dtype).view(t.shape).copy_(t)
    return {"flattened_tensor": flat, "metadata": meta}


def unflatten_bucket(obj) -> list[tuple[str, torch.Tensor]]:
    """Views of the flat buffer, one per metadata entry; every entry is checked against the buffer."""
    if not (isinstance(obj, dict) and isinstance(obj.get("flattened_tensor"), torch.Tensor)
            and isinstance(obj.get("metadata"), list)):
        raise ValueError("a flattened_bucket payload must decode to {'flattened_tensor': tensor, 'metadata': [...]}")
    flat, out = obj["flattened_tensor"], []
    if flat.dtype != torch.uint8 or flat.dim() != 1:
        raise ValueError(f"flattened_tensor must be 1-D uint8, got {flat.dtype} of shape {tuple(flat.shape)}")
    for m in obj["metadata"]:
        try:
            name, dtype, shape = m.name, m.dtype, torch.Size(m.shape)
            start, end = int(m.start_idx), int(m.end_idx)
            if not isinstance(dtype, torch.dtype):
                raise TypeError(f"dtype {dtype!r} is not a torch.dtype")
        except (AttributeError, TypeError, ValueError) as e:
            raise ValueError(f"flattened_bucket metadata entry {m!r} is malformed: {e}") from e
        nbytes = shape.numel() * dtype.itemsize
        if not (isinstance(name, str) and 0 <= start and end == start + nbytes <= flat.numel()
                and start % dtype.itemsize == 0):
            raise ValueError(f"flattened_bucket metadata for {name!r} ({start}:{end}, {dtype}, {tuple(shape)}) does "
                             f"not fit a buffer of {flat.numel()} bytes")
        out.append((name, flat[start:end].view(dtype).view(shape)))
    return out


class _TorchOnlyUnpickler(pickle.Unpickler):
    _REDUCTIONS = {"torch.multiprocessing.reductions", "torch._utils"}

    def find_class(self, module, name):
        if module in self._REDUCTIONS and (name.startswith("rebuild_") or name.startswith("_rebuild")):
            return super().find_class(module, name)
        if (module, name) == ("types", "SimpleNamespace"):  # flattened_bucket metadata
            return SimpleNamespace
        if module in ("torch", "torch.storage"):
            obj = super().find_class(module, name)
            if isinstance(obj, (type, torch.dtype)):
                return obj
        raise pickle.UnpicklingError(f"serialized_named_tensors may not reference {module}.{name}")


def deserialize_named_tensors(payload: str | bytes, load_format: str | None = None) -> list[tuple[str, torch.Tensor]]:
    """Inverse of serialize_named_tensors (or, with load_format="flattened_bucket", of
    serialize_handles(flatten_bucket(...))); raises ValueError on anything that is not such a payload."""
    use_file_system_sharing()
    try:
        raw = base64.b64decode(payload, validate=True) if isinstance(payload, str) else bytes(payload)
        obj = _TorchOnlyUnpickler(io.BytesIO(raw)).load()
    except Exception as e:
        raise ValueError(f"cannot decode serialized_named_tensors: {type(e).__name__}: {e}") from e
    if load_format == FLATTENED:
        return unflatten_bucket(obj)
    if not isinstance(obj, (list, tuple)) or not all(
        isinstance(x, (list, tuple)) and len(x) == 2 and isinstance(x[0], str) and isinstance(x[1], torch.Tensor)
        for x in obj
    ):
        raise ValueError("serialized_named_tensors must decode to a list of (name, tensor) pairs")
    return [(n, t) for n, t in obj]
