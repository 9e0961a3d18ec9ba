"""Throughput measurements of the RL step's phases (training, log-probs, weight sync, rollout).

The CLI is ``tools/benchmark_throughput.py``; the pieces that need no process group (peak lookup,
FLOP accounting, model configs, the table) live in :mod:`megatron_sgpo.bench.throughput` so tests can
check them directly.
"""
