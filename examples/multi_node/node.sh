#!/usr/bin/env bash
# What every node runs inside the container (started by sgpo-70b.sbatch through srun, one task per node).
# Every node first starts a TP8 SGLang server on its 8 GPUs (the planner's 8 x TP8 engines, colocated with the
# training ranks); once all nodes' engines answer, every node starts torchrun with a static rendezvous
# (--nnodes, --node-rank from SLURM_NODEID), and the run generates on all engines (rollout.urls) and syncs
# weights into them from each pipeline stage's sender (rollout.weight_sync=distributed).
set -euo pipefail

NODE_RANK=${SLURM_NODEID:?run under srun}
NNODES=${SLURM_NNODES:?run under srun}
CONFIG=${CONFIG:-examples/multi_node/llama-3.3-70b.yaml}
MODEL=/models/llama-3.3-70b
PORT=${PORT:-30000}
OUT=runs/llama-3.3-70b-sgpo
READY=runs/.sglang-ready-${SLURM_JOB_ID}
mkdir -p "$OUT" "$READY"

# A static share of 0.3 (17.6 GiB of weights + ~6 GiB KV per GPU) leaves ~55 GiB for TP4/PP4 training with full
# recompute. The server listens on the node's address: the trainer's rank 0 and the stage senders reach it there.
python -m sglang.launch_server --model-path "$MODEL" --tp-size 8 --mem-fraction-static 0.3 \
    --enable-memory-saver --enable-deterministic-inference --weight-version 0 --host 0.0.0.0 --port "$PORT" \
    > "$OUT/sglang-node$NODE_RANK.log" 2>&1 &
SGLANG_PID=$!
trap 'kill "$SGLANG_PID" 2>/dev/null || true; rm -f "$READY/$NODE_RANK"' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" > /dev/null; do
    kill -0 "$SGLANG_PID" 2>/dev/null || { echo "SGLang exited:"; tail -n 50 "$OUT/sglang-node$NODE_RANK.log"; exit 1; }
    sleep 10
done
touch "$READY/$NODE_RANK"
# Loading 70B takes minutes: wait for every node's engine here rather than let torchrun's rendezvous time out.
until [ "$(ls "$READY" | wc -l)" -ge "$NNODES" ]; do sleep 10; done
URLS=${ENGINE_URLS:?set by sgpo-70b.sbatch: the engine URL of every node}

# Alternative: --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$SLURM_JOB_ID"
# tolerates node restarts, but assigns ranks in arrival order.
torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node 8 \
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
    -m megatron_sgpo.cli train --config "$CONFIG" \
    run.output_dir="$OUT" model.hf_path="$MODEL" rollout.urls="$URLS" "$@"
