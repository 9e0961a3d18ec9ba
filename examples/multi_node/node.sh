#!/usr/bin/env bash
# What every node runs inside the container (started by sgpo-70b.sbatch through srun, one task per node).
# Node 0 first starts the SGLang server on its 8 GPUs; every node then starts torchrun with a static
# rendezvous (--nnodes, --node-rank from SLURM_NODEID), so global rank 0 lands on node 0 next to SGLang.
set -euo pipefail

NODE_RANK=${SLURM_NODEID:?run under srun}
NNODES=${SLURM_NNODES:?run under srun}
CONFIG=${CONFIG:-examples/multi_node/llama-3.3-70b.yaml}
MODEL=/models/llama-3.3-70b
PORT=${PORT:-30000}
OUT=runs/llama-3.3-70b-sgpo
READY=runs/.sglang-ready-${SLURM_JOB_ID}
mkdir -p "$OUT"

if [ "$NODE_RANK" = 0 ]; then
    # TP8 engine over the head node's GPUs, colocated with training ranks 0-7. A static share of 0.3
    # (17.6 GiB of weights + ~6 GiB KV per GPU) leaves ~55 GiB for TP4/PP4 training with full recompute.
    python -m sglang.launch_server --model-path "$MODEL" --tp-size 8 --mem-fraction-static 0.3 \
        --enable-memory-saver --enable-deterministic-inference --weight-version 0 --host 127.0.0.1 --port "$PORT" \
        > "$OUT/sglang.log" 2>&1 &
    SGLANG_PID=$!
    trap 'kill "$SGLANG_PID" 2>/dev/null || true; rm -f "$READY"' EXIT
    until curl -sf "http://127.0.0.1:$PORT/health" > /dev/null; do
        kill -0 "$SGLANG_PID" 2>/dev/null || { echo "SGLang exited:"; tail -n 50 "$OUT/sglang.log"; exit 1; }
        sleep 10
    done
    touch "$READY"
else
    # Loading 70B takes minutes: wait here rather than let torchrun's rendezvous time out.
    until [ -e "$READY" ]; do sleep 10; done
fi

# Alternative: --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$SLURM_JOB_ID"
# tolerates node restarts, but assigns ranks in arrival order: rank 0 may then not be on the SGLang node.
torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node 8 \
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
    -m megatron_sgpo.cli train --config "$CONFIG" \
    run.output_dir="$OUT" model.hf_path="$MODEL" rollout.url="http://127.0.0.1:$PORT" "$@"
