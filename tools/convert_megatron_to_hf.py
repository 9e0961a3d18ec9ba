"""Convert a checkpoint written by convert_hf_to_megatron.py (or a run checkpoint's dist/) back to a Hugging Face
folder.

Writes sharded safetensors, the index, config and tokenizer files; transformers' from_pretrained loads it.
    python tools/convert_megatron_to_hf.py MEGATRON_DIR OUT_DIR --max-shard-size 5GB
    torchrun --nproc-per-node 2 tools/convert_megatron_to_hf.py MEGATRON_DIR OUT_DIR --pp 2
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from megatron_sgpo.model.convert import add_export_arguments

    p = argparse.ArgumentParser(description="megatron dist checkpoint -> HF safetensors folder")
    p.add_argument("megatron_dir")
    p.add_argument("out_dir")
    add_export_arguments(p)
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
