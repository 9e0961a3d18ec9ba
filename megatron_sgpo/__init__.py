"""megatron-sgpo: sGPO and GRPO-family RL post-training on megatron-core."""

__version__ = "0.1.0"
