"""Guarded Transformer Engine import.

A half-installed Transformer Engine (typical on CPU machines) raises ``RuntimeError`` at import, and
megatron-core only catches ``ImportError`` -- so ``import megatron.core`` itself would crash. We try
TE once, before megatron is imported, and if it fails for any reason we mark it absent in
``sys.modules`` so every later ``import transformer_engine`` is a clean ``ImportError``.
"""
from __future__ import annotations

import sys

_available: bool | None = None
_reason: str = ""


def guard() -> bool:
    """Import TE if it works; otherwise hide it. Returns whether TE is usable."""
    global _available, _reason
    if _available is not None:
        return _available
    try:
        import transformer_engine  # noqa: F401
        import transformer_engine.pytorch  # noqa: F401

        _available = True
    except Exception as exc:  # any failure means "TE absent", see module docstring
        _reason = f"{type(exc).__name__}: {exc}"
        for name in [m for m in sys.modules if m == "transformer_engine" or m.startswith("transformer_engine.")]:
            del sys.modules[name]
        sys.modules["transformer_engine"] = None  # makes `import transformer_engine` raise ImportError
        _available = False
    return _available


def unavailable_reason() -> str:
    """Why TE is not usable ('' when it is, or when it was simply not installed)."""
    return _reason
