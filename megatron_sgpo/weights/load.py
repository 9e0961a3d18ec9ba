"""Load HF tensors into this rank's megatron model chunks (each rank reads only what it holds)."""
from __future__ import annotations

import torch

from megatron_sgpo.weights.mapping import WeightMapping, global_names


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
