"""The one place that lets megatron-core run on a machine without CUDA.

megatron-core assumes CUDA throughout. On CPU-only machines (CI, laptops, the CPU quickstart) we
redirect exactly the assumptions that were measured to matter (see docs/design.md, "CPU mode"),
so the *real* megatron model, pipeline schedules, DDP and optimizers run on CPU with gloo:

1. ``torch.cuda.current_device`` and ``torch.cuda.synchronize``: these raise on a CPU-only build;
   we make them return ``"cpu"`` / do nothing. Nothing that works today changes, because without
   CUDA every call to them fails.
2. Hard-coded ``device="cuda"`` in tensor factories (schedules, optimizers, clip_grads, utils) and the
   CUDA RNG state functions used by megatron's RNG tracker: those modules get a ``torch`` proxy
   that maps the device to CPU and the CUDA RNG calls to the CPU generator. Only megatron's
   modules see the proxy; the real ``torch`` module is untouched.
3. ``Tensor.type()`` strings compared with ``'torch.cuda.FloatTensor'`` in megatron's optimizers: for
   callers inside ``megatron.core.optimizer`` only, a CPU tensor reports the CUDA-style name.
4. ``Tensor.cuda()`` called by megatron itself (tied embeddings across pipeline stages): for callers
   inside ``megatron.core`` only, it returns the tensor where it is.
5. Sequence parallelism: megatron's torch norm (``WrappedTorchNorm``, the local spec's) refuses it, and
   TE's or apex's norms do not exist here. :class:`SequenceParallelNorm` is the torch norm with its
   parameters marked ``sequence_parallel`` as those norms mark theirs, so megatron all-reduces their
   gradients over TP; :mod:`megatron_sgpo.model.build` puts it in the local spec when SP is on.

:func:`enable` does nothing when CUDA is available, so none of this can leak into GPU runs; it is
idempotent, and :func:`is_enabled` tells whether it is active. Nothing else in the project patches
megatron. The interleaved pipeline needs nothing here: its p2p settings hold on every backend (see
:func:`megatron_sgpo.model.build.transformer_config`).
"""
from __future__ import annotations

import importlib
import sys
import types

import torch

# megatron modules that create tensors with device="cuda" or use the CUDA RNG directly.
_PROXIED_MODULES = (
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.utils",
    "megatron.core.tensor_parallel.random",
    "megatron.core.transformer.utils",  # the default causal mask
)
_FACTORIES = ("zeros", "ones", "empty", "tensor", "full", "arange", "zeros_like", "empty_like")

_enabled = False


def _cpu_device(device):
    """Map any CUDA device spelling to CPU; leave everything else alone."""
    if isinstance(device, int):
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        return torch.device("cpu")
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


def _remap_factory(fn):
    def factory(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        kwargs.pop("pin_memory", None)
        return fn(*args, **kwargs)

    factory.__name__ = fn.__name__
    return factory


class _CpuCudaNamespace(types.SimpleNamespace):
    """Stands in for ``torch.cuda`` inside megatron modules: RNG and device calls go to the CPU."""

    def __getattr__(self, name):
        return getattr(torch.cuda, name)


def _cuda_namespace() -> _CpuCudaNamespace:
    rng = types.SimpleNamespace(
        get_rng_state=lambda device=None: torch.get_rng_state(),
        set_rng_state=lambda state, device=None: torch.set_rng_state(state),
    )
    return _CpuCudaNamespace(
        current_device=lambda: "cpu",
        synchronize=lambda *a, **k: None,
        manual_seed=torch.manual_seed,
        get_rng_state=rng.get_rng_state,
        set_rng_state=rng.set_rng_state,
        random=rng,
        is_available=lambda: False,
    )


class _CpuTorchProxy(types.ModuleType):
    """A ``torch`` look-alike for the modules in ``_PROXIED_MODULES``."""

    def __init__(self):
        super().__init__("torch")
        for name in _FACTORIES:
            setattr(self, name, _remap_factory(getattr(torch, name)))
        self.cuda = _cuda_namespace()

    def __getattr__(self, name):
        return getattr(torch, name)


def _rng_state_functions(module) -> None:
    """megatron's tracker calls these module-level helpers directly; point them at the CPU generator."""
    module._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    module._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)


def _patch_tensor_type() -> None:
    original = torch.Tensor.type

    def type_(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs and self.device.type == "cpu":
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("megatron.core.optimizer"):
                return original(self).replace("torch.", "torch.cuda.", 1)
        if dtype is None and not kwargs:
            return original(self)
        return original(self, dtype, non_blocking, **kwargs)

    torch.Tensor.type = type_


def _patch_tensor_cuda() -> None:
    original = torch.Tensor.cuda

    def cuda(self, *args, **kwargs):
        if sys._getframe(1).f_globals.get("__name__", "").startswith("megatron.core"):
            return self
        return original(self, *args, **kwargs)

    torch.Tensor.cuda = cuda


class SequenceParallelNorm:
    """torch's ``RMSNorm``/``LayerNorm`` (what ``WrappedTorchNorm`` builds), usable with sequence parallelism.

    Under SP each TP rank normalises its own sequence shard, so the norm is unchanged but its weight
    gradient is partial: ``finalize_model_grads`` sums the gradients of parameters marked
    ``sequence_parallel`` over the TP group, as it does for TE's and apex's norms.
    """

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, **_):
        if config.layernorm_zero_centered_gamma or config.memory_efficient_layer_norm:
            raise ValueError("zero-centred gamma and memory-efficient layer norm need TE or apex")
        kinds = {"RMSNorm": torch.nn.RMSNorm, "LayerNorm": torch.nn.LayerNorm}
        if config.normalization not in kinds:
            raise ValueError(f"normalization {config.normalization!r} unsupported (supported: {', '.join(kinds)})")
        norm = kinds[config.normalization](hidden_size, eps=eps)
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm


def enable() -> bool:
    """Activate CPU mode if CUDA is absent; return whether it is active. Safe to call repeatedly."""
    global _enabled
    if torch.cuda.is_available():
        return False
    if _enabled:
        return True
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *a, **k: None
    proxy = _CpuTorchProxy()
    for name in _PROXIED_MODULES:
        module = importlib.import_module(name)
        module.torch = proxy
        if name.endswith("tensor_parallel.random"):
            _rng_state_functions(module)
    _patch_tensor_type()
    _patch_tensor_cuda()
    _enabled = True
    return True


def is_enabled() -> bool:
    return _enabled
