"""Algorithm core of sGPO: pure functions on numpy arrays and torch tensors (no I/O, no process groups)."""
