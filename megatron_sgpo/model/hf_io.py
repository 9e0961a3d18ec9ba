"""Reading and writing Hugging Face checkpoint folders, safely and tensor by tensor.

Reading: safetensors only (single file or sharded with ``model.safetensors.index.json``), opened
lazily so a 70B model is never held twice in memory. Pickle ``.bin`` checkpoints are refused:
unpickling runs arbitrary code. Writing: sharded safetensors plus index, config and tokenizer files
(the converters write into a temporary folder renamed into place at the end, so a failure leaves no
partial output).
"""
from __future__ import annotations

import json
import os
import re
import shutil

import torch
from safetensors import safe_open
from safetensors.torch import save_file

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# files copied along with the weights (whatever of them exists)
SIDE_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
    "chat_template.jinja",
)


class HFCheckpoint:
    """Lazy, validated access to the tensors of an HF folder."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.isdir(path):
            raise FileNotFoundError(f"HF checkpoint folder {path!r} does not exist")
        config = os.path.join(path, "config.json")
        if not os.path.exists(config):
            raise FileNotFoundError(f"{config} is missing")
        with open(config) as f:
            self.config = json.load(f)
        self._where = self._locate()
        self._handles: dict[str, object] = {}

    def _locate(self) -> dict[str, str]:
        index = os.path.join(self.path, INDEX)
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            for shard in sorted(set(weight_map.values())):
                if not os.path.exists(os.path.join(self.path, shard)):
                    raise FileNotFoundError(f"shard {shard} listed in {index} is missing")
            return dict(weight_map)
        single = os.path.join(self.path, SINGLE)
        if os.path.exists(single):
            with safe_open(single, framework="pt") as f:
                return {name: SINGLE for name in f.keys()}
        pickles = [n for n in os.listdir(self.path) if n.endswith((".bin", ".pt", ".pth"))]
        if pickles:
            raise ValueError(
                f"{self.path} holds pickle checkpoint(s) {pickles}: refused (unpickling runs code); "
                "convert them to safetensors first, e.g. with transformers' save_pretrained(safe_serialization=True)"
            )
        raise FileNotFoundError(f"no {SINGLE} or {INDEX} in {self.path}")

    def names(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise KeyError(f"tensor {name!r} is not in the checkpoint {self.path}")
        shard = self._where[name]
        if shard not in self._handles:
            self._handles[shard] = safe_open(os.path.join(self.path, shard), framework="pt")
        return self._handles[shard].get_tensor(name)

    def nbytes(self) -> int:
        return sum(os.path.getsize(os.path.join(self.path, s)) for s in set(self._where.values()))


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB' -> 5e9 bytes; '500MiB' -> 500 * 2**20 (the ``--max-shard-size`` of the export commands)."""
    import argparse

    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 5GB, 500MB, 2GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def copy_side_files(src: str, dst: str) -> list[str]:
    """Copy config, generation config and tokenizer files; return the names copied."""
    copied = []
    for name in SIDE_FILES:
        if os.path.exists(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
            copied.append(name)
    return copied


def own_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on CPU, contiguous and the sole user of its storage, as safetensors files need: a view (a
    gate/up half, a vocab slice of a weight) is copied, so the file holds its own bytes only."""
    tensor = tensor.detach().contiguous().cpu()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


class ShardedWriter:
    """Writes (name, tensor) pairs into safetensors shards of at most ``max_shard_bytes``."""

    def __init__(self, folder: str, max_shard_bytes: int = 5 * 2**30):
        self.folder = folder
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[dict[str, torch.Tensor]] = []
        self.weight_map: dict[str, str] = {}
        self.total_bytes = 0
        self._files: list[str] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.weight_map or name in self._pending:
            raise ValueError(f"tensor {name!r} written twice")
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = own_bytes(tensor)
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        fname = f"model-{len(self._files) + 1:05d}.safetensors"
        save_file(self._pending, os.path.join(self.folder, fname), metadata={"format": "pt"})
        self._files.append(fname)
        for name in self._pending:
            self.weight_map[name] = fname
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Flush, name the shards ``-of-N`` and write the index; return the file names."""
        if self._pending:
            self._flush()
        n = len(self._files)
        if n == 1:
            os.replace(os.path.join(self.folder, self._files[0]), os.path.join(self.folder, SINGLE))
            self._files = [SINGLE]
            self.weight_map = {k: SINGLE for k in self.weight_map}
            return self._files
        renamed = {}
        for i, old in enumerate(self._files, start=1):
            new = f"model-{i:05d}-of-{n:05d}.safetensors"
            os.replace(os.path.join(self.folder, old), os.path.join(self.folder, new))
            renamed[old] = new
        self.weight_map = {k: renamed[v] for k, v in self.weight_map.items()}
        self._files = list(renamed.values())
        with open(os.path.join(self.folder, INDEX), "w") as f:
            json.dump({"metadata": {"total_size": self.total_bytes}, "weight_map": self.weight_map}, f, indent=2)
        return self._files
