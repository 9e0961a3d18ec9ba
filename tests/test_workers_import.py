"""Every torchrun worker imports on this machine, GPU-only ones included, so a rename cannot break them unseen."""
import importlib
import os

import pytest

FOLDER = os.path.join(os.path.dirname(__file__), "workers")
WORKERS = sorted(f[:-3] for f in os.listdir(FOLDER) if f.endswith("_worker.py"))


@pytest.mark.parametrize("name", WORKERS)
def test_worker_imports(name, monkeypatch):
    monkeypatch.syspath_prepend(FOLDER)  # torchrun runs a worker with its own folder on the path
    module = importlib.import_module(name)
    assert callable(module.main)
