#!/usr/bin/env bash
# The prepared GPU check as one command, run from the repository root on the GPU machine:
#   bash tools/gpu_check.sh "$OUT"
# Installs the wheels carried in .whl/ (tools/fetch_gpu_wheels.sh downloads them here) into /tmp/site, puts
# the repository on PYTHONPATH (nothing is pip-installed into the machine's Python), runs tools/gpu_check.py.
set -uo pipefail
out="${1:-${OUT:-runs/gpu_check}}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check.sh: installing the carried wheels failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
exec python3 tools/gpu_check.py --out "$out"
