"""SGLang's `serialized_named_tensors` wire format: base64 of a ForkingPickler dump.

ForkingPickler pickles a tensor as a handle to shared memory, not its bytes: a CUDA IPC
handle on GPU, and — with torch's "file_system" sharing strategy — the name of a
shared-memory file on CPU. The receiver maps the same memory, so a colocated update moves
no tensor data through HTTP. The sender must keep its tensors alive until the receiver has
answered (an HTTP round trip guarantees it).

The receiving side unpickles with an allow-list of torch rebuild functions and types only.
"""
from __future__ import annotations

import base64
import io
import pickle
from multiprocessing.reduction import ForkingPickler

import torch
import torch.multiprocessing as tmp


def use_file_system_sharing() -> None:
    """CPU tensors pickled by ForkingPickler become openable by another process."""
    if tmp.get_sharing_strategy() != "file_system":
        tmp.set_sharing_strategy("file_system")


def serialize_named_tensors(named_tensors) -> str:
    """[(name, tensor), ...] → base64 str, as SGLang's MultiprocessingSerializer(output_str=True)."""
    use_file_system_sharing()
    import torch.multiprocessing.reductions  # noqa: F401  registers the tensor reducers

    buf = io.BytesIO()
    ForkingPickler(buf).dump([(str(n), t.detach()) for n, t in named_tensors])
    return base64.b64encode(buf.getvalue()).decode("ascii")


class _TorchOnlyUnpickler(pickle.Unpickler):
    _REDUCTIONS = {"torch.multiprocessing.reductions", "torch._utils"}

    def find_class(self, module, name):
        if module in self._REDUCTIONS and (name.startswith("rebuild_") or name.startswith("_rebuild")):
            return super().find_class(module, name)
        if module in ("torch", "torch.storage"):
            obj = super().find_class(module, name)
            if isinstance(obj, (type, torch.dtype)):
                return obj
        raise pickle.UnpicklingError(f"serialized_named_tensors may not reference {module}.{name}")


def deserialize_named_tensors(payload: str | bytes) -> list[tuple[str, torch.Tensor]]:
    """Inverse of serialize_named_tensors; raises ValueError on anything that is not a name/tensor list."""
    use_file_system_sharing()
    try:
        raw = base64.b64decode(payload, validate=True) if isinstance(payload, str) else bytes(payload)
        obj = _TorchOnlyUnpickler(io.BytesIO(raw)).load()
    except Exception as e:
        raise ValueError(f"cannot decode serialized_named_tensors: {type(e).__name__}: {e}") from e
    if not isinstance(obj, (list, tuple)) or not all(
        isinstance(x, (list, tuple)) and len(x) == 2 and isinstance(x[0], str) and isinstance(x[1], torch.Tensor)
        for x in obj
    ):
        raise ValueError("serialized_named_tensors must decode to a list of (name, tensor) pairs")
    return [(n, t) for n, t in obj]
