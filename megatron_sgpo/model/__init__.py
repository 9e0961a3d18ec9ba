"""The model: HF configs, the megatron-core GPTModel, HF <-> megatron weights and checkpoints, shape and FLOPs."""
