"""Convert a Hugging Face safetensors folder into a megatron-core distributed checkpoint.

The checkpoint loads at any TP (up to 8) and PP, whatever layout converted it. Single process:
    python tools/convert_hf_to_megatron.py HF_DIR OUT_DIR
Several ranks (each builds and reads only its own shards):
    torchrun --nproc-per-node 4 tools/convert_hf_to_megatron.py HF_DIR OUT_DIR --tp 2 --pp 2
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="HF safetensors -> megatron dist checkpoint (any TP/PP on load)")
    p.add_argument("hf_dir")
    p.add_argument("out_dir")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size of this run (world = tp * pp)")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size of this run")
    p.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)

    from megatron_sgpo.model.convert import hf_to_megatron, run_tool
    from megatron_sgpo.platform.layout import ParallelLayout

    layout = ParallelLayout(tp=a.tp, pp=a.pp)

    def convert():
        return hf_to_megatron(a.hf_dir, a.out_dir, layout, a.make_vocab_size_divisible_by,
                              overwrite=a.overwrite, progress=not a.no_progress)

    return run_tool("convert_hf_to_megatron", layout, convert)


if __name__ == "__main__":
    sys.exit(main())
