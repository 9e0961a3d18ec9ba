"""Process groups, megatron parallel state, and the CPU compatibility layer.

Importing this package guards the Transformer Engine import before anything imports megatron.core.
"""
from megatron_sgpo.platform import te as _te

_te.guard()
