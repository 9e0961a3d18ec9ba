"""``sgpo export RUN_DIR OUT_DIR``: a run's trained policy as an HF safetensors folder that transformers loads.

A run checkpoint's ``dist/`` holds the policy as a converted megatron checkpoint, so exporting is the
megatron → HF conversion of it, after checking the checkpoint's files against their manifest. Any layout
(``--tp/--pp`` under torchrun, world = tp × pp) reads any checkpoint; one process is enough for most models.
"""
from __future__ import annotations

import argparse

USAGE = """examples:
  sgpo export runs/quickstart /tmp/policy-hf                 # the latest checkpoint
  sgpo export runs/quickstart /tmp/policy-hf --step 20
  torchrun --nproc-per-node 2 -m megatron_sgpo.cli export RUN_DIR OUT_DIR --pp 2"""


def export_main(argv: list[str]) -> int:
    from megatron_sgpo.model.convert import add_export_arguments

    p = argparse.ArgumentParser(prog="sgpo export", description=__doc__.split("\n\n")[0], epilog=USAGE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="the run's output_dir (holds checkpoints/)")
    p.add_argument("out_dir", help="the HF folder to write")
    p.add_argument("--step", type=int, default=None, help="checkpoint step to export (default: the latest)")
    add_export_arguments(p)
    a = p.parse_args(argv)

    from megatron_sgpo.loop import checkpoint
    from megatron_sgpo.model.convert import megatron_to_hf, run_tool
    from megatron_sgpo.platform.layout import ParallelLayout

    layout = ParallelLayout(tp=a.tp, pp=a.pp)

    def export():
        path = checkpoint.find(a.run_dir, a.step)
        checkpoint.verify(path)
        return megatron_to_hf(checkpoint.model_dir(path), a.out_dir, layout, a.max_shard_size,
                              overwrite=a.overwrite, progress=not a.no_progress)

    return run_tool("sgpo export", layout, export)
