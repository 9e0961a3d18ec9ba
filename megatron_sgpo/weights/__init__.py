"""Weight sync: trained megatron shards -> HF-named tensors -> rollout engines, and the transports it uses."""
