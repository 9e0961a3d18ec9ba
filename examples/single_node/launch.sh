#!/usr/bin/env bash
# sGPO on one 8-GPU node: an SGLang server on GPU 0 (colocated with training rank 0), megatron training
# on all 8 GPUs (TP2 x DP4). Run inside the NGC container built from the repo's Dockerfile, e.g.
#   docker run --gpus all --ipc=host --ulimit memlock=-1 -v /models:/models -v $PWD/runs:/opt/megatron-sgpo/runs \
#       --entrypoint bash megatron-sgpo examples/single_node/launch.sh
# --ipc=host matters: weight sync hands CPU tensors to SGLang through /dev/shm (docs/rollout.md).
# Extra arguments are dotted config overrides, e.g. `launch.sh train.steps=10 run.mode=grpo`.
set -euo pipefail

MODEL=${MODEL:-/models/Qwen2.5-7B-Instruct}   # huggingface-cli download Qwen/Qwen2.5-7B-Instruct --local-dir $MODEL
CONFIG=${CONFIG:-examples/single_node/qwen2.5-7b-gsm8k.yaml}
PORT=${PORT:-30000}
MEM_FRACTION=${MEM_FRACTION:-0.35}  # SGLang's share of GPU 0 (weights 15 GiB + KV); training uses the rest
OUT=${OUT:-runs/qwen2.5-7b-gsm8k}
mkdir -p "$OUT"

# No conversion step: `sgpo train` reads the HF safetensors folder straight into megatron-core at any
# TP/PP. tools/convert_hf_to_megatron.py is only for handing a dist checkpoint to other megatron tooling.

# 1. SGLang first, so it takes its memory fraction of GPU 0 before training allocates.
#    --tp-size 1: the trainer's SGLang client sends one weight payload (see examples/README.md, "Limits").
#    --weight-version 0 matches the step-0 policy; every sync after an optimizer step advances it.
CUDA_VISIBLE_DEVICES=0 python -m sglang.launch_server \
    --model-path "$MODEL" --tp-size 1 --mem-fraction-static "$MEM_FRACTION" \
    --enable-memory-saver --enable-deterministic-inference --weight-version 0 --host 127.0.0.1 --port "$PORT" \
    > "$OUT/sglang.log" 2>&1 &
SGLANG_PID=$!
trap 'kill "$SGLANG_PID" 2>/dev/null || true' EXIT

echo "waiting for SGLang on port $PORT (log: $OUT/sglang.log)"
until curl -sf "http://127.0.0.1:$PORT/health" > /dev/null; do
    kill -0 "$SGLANG_PID" 2>/dev/null || { echo "SGLang exited:"; tail -n 50 "$OUT/sglang.log"; exit 1; }
    sleep 5
done

# 2. Training: 8 ranks; rank 0 also drives profiling, rollouts and the weight sync over HTTP.
export OMP_NUM_THREADS=8
export CUDA_DEVICE_MAX_CONNECTIONS=1   # megatron overlaps TP communication with compute only with 1
torchrun --standalone --nproc-per-node 8 -m megatron_sgpo.cli train --config "$CONFIG" \
    run.output_dir="$OUT" model.hf_path="$MODEL" rollout.url="http://127.0.0.1:$PORT" "$@"
