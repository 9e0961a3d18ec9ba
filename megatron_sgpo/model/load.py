"""Load HF tensors into this rank's megatron model chunks (each rank reads only what it holds)."""
from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_sgpo.model.mapping import WeightMapping, global_names


def unwrap(chunk):
    """The GPTModel inside megatron's DDP / Float16Module wrappers."""
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


def load_hf_weights(chunks, hf, mapping: WeightMapping, tp_rank: int) -> int:
    """Copy HF tensors (``hf[name]`` lookups) into the chunks' parameters; return the bytes loaded.

    Every parameter must be covered and every shape must agree: a config that disagrees with the
    tensors fails here, naming the tensor.
    """
    loaded = 0
    for chunk in chunks:
        model = unwrap(chunk)
        names = global_names(model)
        params = dict(model.named_parameters())
        for local, global_name in names.items():
            param = params[local]
            sources = ", ".join(mapping.rule(global_name).hf_names)
            try:
                value = mapping.to_megatron(global_name, hf, tp_rank)
            except (RuntimeError, ValueError) as exc:  # reshape failures: the config disagrees with the tensors
                raise ValueError(f"cannot build {global_name} from HF {sources}: {exc}") from None
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"shape mismatch for {global_name} (from HF {sources}): checkpoint gives "
                    f"{tuple(value.shape)}, the model built from config.json expects {tuple(param.shape)}"
                )
            with torch.no_grad():
                param.copy_(value.to(param.dtype))
            loaded += value.numel() * value.element_size()
    return loaded


class ReadRecorder:
    """``hf[name]`` lookups that remember what was read (and can tick a progress bar)."""

    def __init__(self, hf, on_read=None):
        self.hf, self.on_read, self.read = hf, on_read, set()

    def __getitem__(self, name):
        if self.on_read:
            self.on_read()
        self.read.add(name)
        return self.hf[name]


def check_all_used(hf, read: set, tied: bool) -> None:
    """Collective: fail if no rank read some HF tensor, e.g. a config with fewer layers than the checkpoint."""
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, sorted(read))
    used = set().union(*map(set, everyone))
    ignorable = {"lm_head.weight"} if tied else set()  # some tied checkpoints store the copy
    unused = [n for n in hf.names() if n not in used and n not in ignorable and not n.endswith("rotary_emb.inv_freq")]
    if unused:
        more = f" and {len(unused) - 5} more" if len(unused) > 5 else ""
        raise ValueError(f"{hf.path}: tensors {unused[:5]}{more} are not used by the model that config.json describes")
