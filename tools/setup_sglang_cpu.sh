#!/usr/bin/env bash
# SGLang 0.5.23 as a CPU server, in its own venv (default .venv-sglang): the `sglang` test tier and the engine
# benchmark start it with megatron_sgpo.rollout.launcher.SGLangLauncher.sglang(..., device="cpu",
# python=VENV/bin/python). SGLang pins torch 2.14.1 (CUDA), flashinfer and sgl-kernel; none of them is installed:
# torch 2.13.0+cpu, `sglang==0.5.23 --no-deps`, and the pinned pure-Python packages its server imports
# (tools/sglang_cpu_requirements.txt). Its CPU path calls one sgl_kernel function, and imports torchvision:
# both come from the stand-ins in tests/engines/sglang_shims, which the launcher's caller puts on PYTHONPATH.
# Usage: bash tools/setup_sglang_cpu.sh [VENV]   (idempotent: exits early when the venv is ready)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-sglang}
if [ -x "$VENV/bin/python" ] && SGLANG_USE_CPU_ENGINE=1 PYTHONPATH=tests/engines/sglang_shims \
   "$VENV/bin/python" -c "import sglang.srt.entrypoints.http_server, torch; assert torch.__version__.startswith('2.13.0')" 2>/dev/null; then
  echo "setup_sglang_cpu: $VENV is ready"; exit 0
fi
python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
cons=$(mktemp); trap 'rm -f "$cons"' EXIT
echo "torch==2.13.0" > "$cons"  # nothing below may replace the CPU torch
$PIP install -q -c "$cons" torch==2.13.0
$PIP install -q --no-deps sglang==0.5.23
$PIP install -q --no-deps -c "$cons" -r tools/sglang_cpu_requirements.txt
SGLANG_USE_CPU_ENGINE=1 PYTHONPATH=tests/engines/sglang_shims "$VENV/bin/python" -c \
  "import sglang, sglang.srt.entrypoints.http_server, torch; print('setup_sglang_cpu: sglang', sglang.__version__, 'torch', torch.__version__)"
