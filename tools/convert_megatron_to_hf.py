"""Convert a checkpoint written by convert_hf_to_megatron.py back to a Hugging Face folder.

Writes sharded safetensors, the index, config and tokenizer files; transformers' from_pretrained loads it.
    python tools/convert_megatron_to_hf.py MEGATRON_DIR OUT_DIR --max-shard-size 5GB
    torchrun --nproc-per-node 2 tools/convert_megatron_to_hf.py MEGATRON_DIR OUT_DIR --pp 2
"""
from __future__ import annotations

import argparse
import re
import sys

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB' -> 5e9 bytes; '500MiB' -> 500 * 2**20."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 5GB, 500MB, 2GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="megatron dist checkpoint -> HF safetensors folder")
    p.add_argument("megatron_dir")
    p.add_argument("out_dir")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size to load at (world = tp * pp)")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size to load at")
    p.add_argument("--max-shard-size", type=parse_size, default=parse_size("5GB"))
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)

    from megatron_sgpo.model.convert import megatron_to_hf, run_tool
    from megatron_sgpo.platform.layout import ParallelLayout

    layout = ParallelLayout(tp=a.tp, pp=a.pp)

    def convert():
        return megatron_to_hf(a.megatron_dir, a.out_dir, layout, a.max_shard_size,
                              overwrite=a.overwrite, progress=not a.no_progress)

    return run_tool("convert_megatron_to_hf", layout, convert)


if __name__ == "__main__":
    sys.exit(main())
